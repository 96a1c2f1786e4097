using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Runtime.Tests.Tokenization;

public sealed class Gpt2TokenizerTests
{
    private static readonly Lazy<ITextTokenizer> Gpt2 =
        new(() => TokenizerLoader.Load(RepoPaths.Models("gpt2-tokenizer")));

    public static TheoryData<string, int[]> GoldenCases() => Gpt2GoldenCases.AsTheoryData();

    [Fact]
    public void Golden_file_has_all_cases()
    {
        // Guards the theory below against silently running on an empty or truncated fixture.
        Assert.Equal(29, Gpt2GoldenCases.Load().Count);
    }

    [Theory]
    [MemberData(nameof(GoldenCases), DisableDiscoveryEnumeration = true)]
    public void Encode_matches_reference(string text, int[] expected)
    {
        Assert.Equal(expected, Gpt2.Value.Encode(text));
    }

    [Theory]
    [MemberData(nameof(GoldenCases), DisableDiscoveryEnumeration = true)]
    public void Decode_of_reference_ids_gives_back_the_text(string text, int[] ids)
    {
        Assert.Equal(text, Gpt2.Value.Decode(ids));
    }

    [Fact]
    public void Endoftext_is_bos_and_eos_and_not_added()
    {
        var tok = Gpt2.Value;
        Assert.Equal(Gpt2GoldenCases.VocabSize, tok.VocabSize);
        Assert.Equal(Gpt2GoldenCases.EndOfText, tok.BosId);
        Assert.Equal(Gpt2GoldenCases.EndOfText, tok.EosId);
        Assert.False(tok.AddsBos);
    }

    [Fact]
    public void Endoftext_in_text_is_one_special_token()
    {
        // Hugging Face semantics: the special token is matched whole; the text around it is
        // encoded as usual (" a" is 257 in the golden cases, "0" is 15).
        var ids = Gpt2.Value.Encode("0<|endoftext|> a");
        Assert.Equal([15, Gpt2GoldenCases.EndOfText, 257], ids);
        Assert.Equal("0<|endoftext|> a", Gpt2.Value.Decode(ids));
    }

    [Fact]
    public void Encoder_json_and_vocab_bpe_names_load_the_same_tokenizer()
    {
        using var dir = new TempDirectory();
        File.Copy(RepoPaths.Models("gpt2-tokenizer/vocab.json"), dir.File("encoder.json"));
        File.Copy(RepoPaths.Models("gpt2-tokenizer/merges.txt"), dir.File("vocab.bpe"));

        var fromDir = TokenizerLoader.Load(dir.Path);
        var fromFile = TokenizerLoader.Load(dir.File("encoder.json"));

        foreach (var (text, ids) in Gpt2GoldenCases.Load())
        {
            Assert.Equal(ids, fromDir.Encode(text));
            Assert.Equal(ids, fromFile.Encode(text));
        }
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(Gpt2GoldenCases.VocabSize)]
    [InlineData(int.MaxValue)]
    public void Decode_rejects_ids_outside_the_vocabulary(int id)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Gpt2.Value.Decode([257, id]));
        Assert.Contains(id.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
    }
}
