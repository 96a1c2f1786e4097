using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Runtime.Tests.Tokenization;

/// <summary>
/// The tok512 vocabulary in both of its forms: SentencePiece's tok512.model (Hugging Face Llama
/// semantics) and llama2.c's tok512.bin (run.c semantics).
/// </summary>
public sealed class Stories260KTokenizerTests
{
    // From tests/fixtures/stories260K/golden-greedy.json, produced by llama2.c's run.c.
    private const string Prompt = "Once upon a time";
    private static readonly int[] PromptIds = [1, 403, 407, 261, 378];
    private static readonly int[] GeneratedIds = [473, 473, 473, 473, 473, 473, 473, 483, 339, 260, 403, 305, 299, 302, 310, 1];
    private const string GeneratedText = "Once upon a timeQQQQQQQ9pphe Onceleingenily";

    // Ids read off tok512.bin with an independent script: " " = 410, " a" = 261, " b" = 268.
    private const int Space = 410;

    private static readonly Lazy<ITextTokenizer> RunC = new(() => TokenizerLoader.Load(RepoPaths.Models("stories260K/tok512.bin")));
    private static readonly Lazy<ITextTokenizer> SentencePiece = new(() => TokenizerLoader.Load(RepoPaths.Models("stories260K/tok512.model")));

    [Fact]
    public void SentencePiece_model_reproduces_the_prompt_ids()
    {
        var tok = SentencePiece.Value;
        Assert.Equal(PromptIds, tok.Encode(Prompt));
        Assert.Equal(Prompt, tok.Decode(PromptIds));
        Assert.Equal((512, 1, 2, true), (tok.VocabSize, tok.BosId, tok.EosId, tok.AddsBos));
    }

    [Fact]
    public void RunC_bin_reproduces_the_prompt_ids()
    {
        var tok = RunC.Value;
        Assert.Equal(PromptIds, tok.Encode(Prompt));
        Assert.Equal((512, 1, 2, true), (tok.VocabSize, tok.BosId, tok.EosId, tok.AddsBos));
    }

    [Fact]
    public void Directory_with_tok512_bin_uses_run_c_semantics()
    {
        // models/stories260K has tok512.bin and tok512.model but no tokenizer.model, so the
        // llama2.c tokenizer is the one picked; only run.c keeps the double space.
        var tok = TokenizerLoader.Load(RepoPaths.Models("stories260K"));
        Assert.IsType<Llama2CTokenizer>(tok);
        Assert.Equal([1, 261, Space, 268], tok.Encode("a  b"));
    }

    [Fact]
    public void RunC_decode_matches_run_c_output_for_the_greedy_sample()
    {
        // run.c prints every piece after BOS with BOS's following space stripped and stops at BOS.
        Assert.Equal(GeneratedText, RunC.Value.Decode([.. PromptIds, .. GeneratedIds]));
    }

    [Fact]
    public void RunC_empty_text_is_only_bos()
    {
        Assert.Equal([1], RunC.Value.Encode(""));
        Assert.Equal("", RunC.Value.Decode([1]));
    }

    [Fact]
    public void RunC_keeps_repeated_and_leading_spaces()
    {
        var tok = RunC.Value;
        // Dummy prefix " " then "a"," ","b": " "+"a" -> " a" (score -2) then " "+"b" -> " b" (-9).
        Assert.Equal([1, 261, 268], tok.Encode("a b"));
        // The extra space has no "  " piece to join, so it stays a lone " ".
        Assert.Equal([1, 261, Space, 268], tok.Encode("a  b"));
        // Leading space: dummy prefix " " stays alone, the text's own " a" merges.
        Assert.Equal([1, Space, 261], tok.Encode(" a"));
        Assert.Equal([1, 261, Space], tok.Encode("a "));
    }

    [Fact]
    public void RunC_falls_back_to_byte_pieces_and_decodes_them_back()
    {
        // "日" (E6 97 A5) is not in the 512-piece vocabulary: each byte becomes id byte + 3.
        int[] ids = RunC.Value.Encode("日");
        Assert.Equal([1, Space, 0xE6 + 3, 0x97 + 3, 0xA5 + 3], ids);
        Assert.Equal(" 日", RunC.Value.Decode(ids[1..]));
        Assert.Equal("日", RunC.Value.Decode(ids[..1].Concat(ids[2..]).ToArray()));
    }

    [Theory]
    [InlineData("Once upon a time, there was a little girl named Lily.")]
    [InlineData("She liked to play outside with her dog.")]
    [InlineData("The end!")]
    [InlineData("Tom said, \"Can I have it?\" and Mom smiled.")]
    public void RunC_agrees_with_SentencePiece_on_singly_spaced_text(string text)
    {
        // Two independent encoders of the same vocabulary agree where their whitespace rules do.
        Assert.Equal(SentencePiece.Value.Encode(text), RunC.Value.Encode(text));
        Assert.Equal(text, RunC.Value.Decode(RunC.Value.Encode(text)));
    }

    [Fact]
    public void RunC_matches_a_naive_transcription_of_run_c_on_random_text()
    {
        var oracle = new RunCReferenceEncoder(RepoPaths.Models("stories260K/tok512.bin"));
        // Letters and spaces exercise merges; NBSP and U+200A are pieces of tok512; the rest fall
        // back to bytes (2-, 3- and 4-byte UTF-8).
        string[] alphabet = ["a", "e", "t", "h", "o", "n", " ", " ", ".", ",", "\n", "\u00A0", "\u200A", "é", "日", "😀", "Q"];
        var random = new Random(1234);
        for (int n = 0; n < 300; n++)
        {
            string text = string.Concat(Enumerable.Range(0, random.Next(0, 40)).Select(_ => alphabet[random.Next(alphabet.Length)]));
            Assert.Equal(oracle.Encode(text), RunC.Value.Encode(text));
        }
    }

    [Fact]
    public void RunC_breaks_score_ties_leftmost_like_run_c()
    {
        // A vocabulary where "ab" and "ba" score the same: run.c merges the leftmost pair first.
        using var dir = new TempDirectory();
        string path = dir.File("tok.bin");
        var pieces = new List<(string Piece, float Score)> { ("<unk>", 0), ("\n<s>\n", 0), ("\n</s>\n", 0) };
        pieces.AddRange(Enumerable.Range(0, 256).Select(b => ($"<0x{b:X2}>", 0f)));
        pieces.AddRange([(" ", -10f), ("a", -10f), ("b", -10f), ("ab", -1f), ("ba", -1f)]);
        using (var w = new BinaryWriter(File.Create(path)))
        {
            w.Write(7);
            foreach (var (piece, score) in pieces)
            {
                var bytes = System.Text.Encoding.UTF8.GetBytes(piece);
                w.Write(score);
                w.Write(bytes.Length);
                w.Write(bytes);
            }
        }

        var tok = TokenizerLoader.Load(path);
        const int space = 259, a = 260, ab = 262, ba = 263;
        // [ , a, b, a]: "ab" and "ba" tie; the leftmost wins, leaving "a" (rightmost would give a, ba).
        Assert.Equal([1, space, ab, a], tok.Encode("aba"));
        Assert.Equal([1, space, ba, ba, a], tok.Encode("babaa"));
        var oracle = new RunCReferenceEncoder(path);
        foreach (var text in new[] { "ababab", "bab ab", " aabba ", "babbab" })
        {
            Assert.Equal(oracle.Encode(text), tok.Encode(text));
        }
    }

    [Fact]
    public void SentencePiece_always_prepends_bos()
    {
        Assert.Equal([1], SentencePiece.Value.Encode(""));
        // Microsoft.ML.Tokenizers 2.0.1 returns nothing for one-character input; "▁a" is 261.
        Assert.Equal([1, 261], SentencePiece.Value.Encode("a"));
        Assert.Equal([1, Space, 0xE6 + 3, 0x97 + 3, 0xA5 + 3], SentencePiece.Value.Encode("日"));
    }

    [Fact]
    public void SentencePiece_folds_spaces_where_run_c_keeps_them()
    {
        Assert.Equal([1, 261, 268], SentencePiece.Value.Encode("  a  b  "));
        Assert.NotEqual(SentencePiece.Value.Encode("  a  b  "), RunC.Value.Encode("  a  b  "));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(512)]
    public void Decode_rejects_ids_outside_the_vocabulary(int id)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => RunC.Value.Decode([1, id]));
        Assert.Throws<ArgumentOutOfRangeException>(() => SentencePiece.Value.Decode([1, id]));
    }
}
