using System.Text.Json;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Runtime.Tests.Tokenization;

/// <summary>
/// Builds Hugging Face tokenizer.json files from GPT-2's vocab.json and merges.txt and checks that
/// they reproduce the independent reference encodings.
/// </summary>
public sealed class HuggingFaceTokenizerJsonTests
{
    private const int CustomId = 50257;
    private const string Custom = "<|custom|>";

    public enum MergeStyle
    {
        Strings,
        Pairs,
    }

    public enum PreTokenizerStyle
    {
        ByteLevelRegex,
        SplitThenByteLevel,
    }

    [Theory]
    [InlineData(MergeStyle.Strings, PreTokenizerStyle.ByteLevelRegex)]
    [InlineData(MergeStyle.Pairs, PreTokenizerStyle.ByteLevelRegex)]
    [InlineData(MergeStyle.Strings, PreTokenizerStyle.SplitThenByteLevel)]
    public void Tokenizer_json_reproduces_every_reference_case(MergeStyle merges, PreTokenizerStyle pre)
    {
        using var dir = new TempDirectory();
        string path = WriteTokenizerJson(dir, merges, pre);

        var tok = TokenizerLoader.Load(path);

        foreach (var (text, ids) in Gpt2GoldenCases.Load())
        {
            Assert.Equal(ids, tok.Encode(text));
            Assert.Equal(text, tok.Decode(ids));
        }

        Assert.Equal(Gpt2GoldenCases.EndOfText, tok.BosId);
        Assert.Equal(Gpt2GoldenCases.EndOfText, tok.EosId);
        Assert.False(tok.AddsBos);
    }

    [Fact]
    public void Directory_with_tokenizer_json_prefers_it()
    {
        using var dir = new TempDirectory();
        WriteTokenizerJson(dir, MergeStyle.Strings, PreTokenizerStyle.ByteLevelRegex);

        var tok = TokenizerLoader.Load(dir.Path);

        // Only the tokenizer.json knows the added token, so this proves which file was used.
        Assert.Equal(CustomId + 1, tok.VocabSize);
        Assert.Equal([CustomId], tok.Encode(Custom));
    }

    [Fact]
    public void Added_tokens_are_recognised_in_text_and_decoded()
    {
        using var dir = new TempDirectory();
        var tok = TokenizerLoader.Load(WriteTokenizerJson(dir, MergeStyle.Pairs, PreTokenizerStyle.ByteLevelRegex));

        // " a" is 257 and "0" is 15 in the reference cases.
        int[] ids = tok.Encode(" a" + Custom + "0<|endoftext|>");
        Assert.Equal([257, CustomId, 15, Gpt2GoldenCases.EndOfText], ids);
        Assert.Equal(" a" + Custom + "0<|endoftext|>", tok.Decode(ids));
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([CustomId + 1]));
    }

    /// <summary>Writes a GPT-2 tokenizer.json, shaped like the ones Hugging Face saves.</summary>
    internal static string WriteTokenizerJson(TempDirectory dir, MergeStyle mergeStyle, PreTokenizerStyle preStyle)
    {
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllBytes(RepoPaths.Models("gpt2-tokenizer/vocab.json")))!;
        var merges = File.ReadAllLines(RepoPaths.Models("gpt2-tokenizer/merges.txt"))
            .Skip(1)
            .Where(l => l.Length > 0)
            .ToList();

        string path = dir.File("tokenizer.json");
        using (var stream = File.Create(path))
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteStartArray("added_tokens");
            foreach (var (content, id) in new[] { ("<|endoftext|>", Gpt2GoldenCases.EndOfText), (Custom, CustomId) })
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", content);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", true);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WritePropertyName("pre_tokenizer");
            if (preStyle == PreTokenizerStyle.ByteLevelRegex)
            {
                WriteByteLevel(w, useRegex: true);
            }
            else
            {
                w.WriteStartObject();
                w.WriteString("type", "Sequence");
                w.WriteStartArray("pretokenizers");
                w.WriteStartObject();
                w.WriteString("type", "Split");
                w.WriteStartObject("pattern");
                w.WriteString("Regex", @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+");
                w.WriteEndObject();
                w.WriteString("behavior", "Isolated");
                w.WriteBoolean("invert", false);
                w.WriteEndObject();
                WriteByteLevel(w, useRegex: false);
                w.WriteEndArray();
                w.WriteEndObject();
            }

            w.WritePropertyName("post_processor");
            WriteByteLevel(w, useRegex: true);
            w.WritePropertyName("decoder");
            WriteByteLevel(w, useRegex: true);
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteNull("unk_token");
            w.WriteString("continuing_subword_prefix", string.Empty);
            w.WriteString("end_of_word_suffix", string.Empty);
            w.WriteBoolean("fuse_unk", false);
            w.WriteBoolean("byte_fallback", false);
            w.WriteStartObject("vocab");
            foreach (var (token, id) in vocab.OrderBy(kv => kv.Value))
            {
                w.WriteNumber(token, id);
            }

            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var merge in merges)
            {
                if (mergeStyle == MergeStyle.Strings)
                {
                    w.WriteStringValue(merge);
                }
                else
                {
                    var parts = merge.Split(' ');
                    w.WriteStartArray();
                    w.WriteStringValue(parts[0]);
                    w.WriteStringValue(parts[1]);
                    w.WriteEndArray();
                }
            }

            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }

        return path;
    }

    private static void WriteByteLevel(Utf8JsonWriter w, bool useRegex)
    {
        w.WriteStartObject();
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", false);
        w.WriteBoolean("trim_offsets", true);
        w.WriteBoolean("use_regex", useRegex);
        w.WriteEndObject();
    }
}
