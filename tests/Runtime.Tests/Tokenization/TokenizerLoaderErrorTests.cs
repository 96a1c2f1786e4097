using System.Buffers.Binary;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Runtime.Tests.Tokenization;

/// <summary>Every unusable input fails with a <see cref="ModelFormatException"/> naming the file and the problem.</summary>
public sealed class TokenizerLoaderErrorTests
{
    private static ModelFormatException LoadFails(string path, params string[] messageParts)
    {
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(path));
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
        foreach (var part in messageParts)
        {
            Assert.Contains(part, e.Problem, StringComparison.OrdinalIgnoreCase);
        }

        return e;
    }

    [Fact]
    public void Missing_file()
    {
        using var dir = new TempDirectory();
        var e = LoadFails(dir.File("tokenizer.json"), "not found");
        Assert.Equal(dir.File("tokenizer.json"), e.FilePath);
    }

    [Fact]
    public void Empty_directory()
    {
        using var dir = new TempDirectory();
        LoadFails(dir.Path, "no tokenizer", "tokenizer.json", "tok*.bin");
    }

    [Fact]
    public void Directory_with_vocab_json_but_no_merges()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("vocab.json"), "{\"a\": 0}");
        LoadFails(dir.Path, "merges.txt is missing");
        LoadFails(dir.File("vocab.json"), "merges.txt");
    }

    [Fact]
    public void Unrecognised_file_name()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("notes.txt"), "hello");
        LoadFails(dir.File("notes.txt"), "not a recognised tokenizer file");
    }

    [Fact]
    public void Tokenizer_json_that_is_not_json()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), "{\"model\": {\"type\": \"BPE\", ");
        LoadFails(dir.File("tokenizer.json"), "not valid JSON");
    }

    [Fact]
    public void Tokenizer_json_without_a_model()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"), "[1, 2, 3]");
        LoadFails(dir.File("tokenizer.json"), "\"model\"");
    }

    [Theory]
    [InlineData("Unigram")]
    [InlineData("WordPiece")]
    public void Tokenizer_json_with_a_non_BPE_model(string type)
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"),
            $"{{\"pre_tokenizer\": {{\"type\": \"ByteLevel\"}}, \"model\": {{\"type\": \"{type}\", \"vocab\": {{}}}}}}");
        LoadFails(dir.File("tokenizer.json"), type, "not supported", "BPE");
    }

    [Fact]
    public void Tokenizer_json_BPE_that_is_not_byte_level()
    {
        // Llama/Mistral-style BPE (Metaspace, byte fallback) would encode wrongly as byte-level.
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"),
            "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"▁\"}, " +
            "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
        LoadFails(dir.File("tokenizer.json"), "Metaspace", "byte-level");
    }

    [Fact]
    public void Tokenizer_json_with_malformed_merge()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("tokenizer.json"),
            "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, " +
            "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\"]]}}");
        LoadFails(dir.File("tokenizer.json"), "model.merges\"[0]");
    }

    [Fact]
    public void Vocab_json_that_is_not_json()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("vocab.json"), "not json at all");
        File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\n");
        LoadFails(dir.File("vocab.json"), "not valid JSON");
    }

    [Fact]
    public void Vocab_json_with_non_integer_ids()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("vocab.json"), "{\"a\": \"zero\"}");
        File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\n");
        LoadFails(dir.File("vocab.json"), "\"a\"", "integer id");
    }

    [Fact]
    public void Merges_txt_with_a_malformed_line()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.File("vocab.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}");
        File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\na b\nab\n");
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal(dir.File("merges.txt"), e.FilePath);
        Assert.Contains("line 3", e.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void SentencePiece_model_that_is_not_a_protobuf()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tokenizer.model"), [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        LoadFails(dir.File("tokenizer.model"), "SentencePiece");
    }

    [Fact]
    public void SentencePiece_model_with_lying_length_field()
    {
        // Field 1 (pieces), length-delimited, claiming ~2 GB followed by three bytes.
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tokenizer.model"), [0x0A, 0xF0, 0xFF, 0xFF, 0xFF, 0x07, 1, 2, 3]);
        LoadFails(dir.File("tokenizer.model"), "SentencePiece");
    }

    [Fact]
    public void SentencePiece_model_that_is_empty()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tokenizer.model"), []);
        LoadFails(dir.File("tokenizer.model"), "SentencePiece");
    }

    [Fact]
    public void Tok_bin_shorter_than_its_header()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tok.bin"), [7, 0]);
        LoadFails(dir.File("tok.bin"), "too short", "max_token_length");
    }

    [Fact]
    public void Tok_bin_truncated_inside_a_piece()
    {
        using var dir = new TempDirectory();
        var good = File.ReadAllBytes(RepoPaths.Models("stories260K/tok512.bin"));
        File.WriteAllBytes(dir.File("tok512.bin"), good[..(good.Length - 3)]);
        LoadFails(dir.File("tok512.bin"), "truncated", "piece 511");
    }

    [Fact]
    public void Tok_bin_truncated_inside_a_piece_header()
    {
        using var dir = new TempDirectory();
        byte[] bytes = [.. ValidPrefix(), 0, 0, 0x80];
        File.WriteAllBytes(dir.File("tok.bin"), bytes);
        LoadFails(dir.File("tok.bin"), "truncated", "header");
    }

    [Fact]
    public void Tok_bin_with_negative_piece_length()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tok.bin"), [.. ValidPrefix(), .. Piece(0f, -5)]);
        LoadFails(dir.File("tok.bin"), "negative length -5");
    }

    [Fact]
    public void Tok_bin_with_lying_huge_piece_length()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tok.bin"), [.. ValidPrefix(), .. Piece(0f, int.MaxValue), 1, 2, 3]);
        LoadFails(dir.File("tok.bin"), $"claims {int.MaxValue} bytes");
    }

    [Fact]
    public void Tok_bin_with_piece_longer_than_max_token_length()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tok.bin"), [.. ValidPrefix(), .. Piece(0f, 8), .. "12345678"u8]);
        LoadFails(dir.File("tok.bin"), "longer than", "max_token_length 7");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public void Tok_bin_with_non_positive_max_token_length(int maxLength)
    {
        using var dir = new TempDirectory();
        var bytes = ValidPrefix();
        BinaryPrimitives.WriteInt32LittleEndian(bytes, maxLength);
        File.WriteAllBytes(dir.File("tok.bin"), bytes);
        LoadFails(dir.File("tok.bin"), "max_token_length", "positive");
    }

    [Fact]
    public void Tok_bin_with_too_few_pieces()
    {
        using var dir = new TempDirectory();
        File.WriteAllBytes(dir.File("tok.bin"), [7, 0, 0, 0, .. Piece(0f, 5), .. "<unk>"u8]);
        LoadFails(dir.File("tok.bin"), "1 pieces", "259");
    }

    [Fact]
    public void Directory_with_two_tok_bins_is_ambiguous()
    {
        using var dir = new TempDirectory();
        File.Copy(RepoPaths.Models("stories260K/tok512.bin"), dir.File("tok512.bin"));
        File.Copy(RepoPaths.Models("stories260K/tok512.bin"), dir.File("tok512b.bin"));
        LoadFails(dir.Path, "several", "tok512.bin", "tok512b.bin");
    }

    /// <summary>The header and first few pieces of the real tok512.bin, which are well formed.</summary>
    private static byte[] ValidPrefix()
    {
        var good = File.ReadAllBytes(RepoPaths.Models("stories260K/tok512.bin"));
        int offset = 4;
        for (int i = 0; i < 3; i++)
        {
            offset += 8 + BinaryPrimitives.ReadInt32LittleEndian(good.AsSpan(offset + 4));
        }

        return good[..offset];
    }

    private static byte[] Piece(float score, int length)
    {
        var header = new byte[8];
        BinaryPrimitives.WriteSingleLittleEndian(header, score);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4), length);
        return header;
    }
}
