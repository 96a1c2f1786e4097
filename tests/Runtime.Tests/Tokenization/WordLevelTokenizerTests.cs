using System.Text.Json;
using InterpMesh.Runtime.Tests.Support;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Runtime.Tests.Tokenization;

/// <summary>WordLevel tokenizer.json files, as the toy models ship them and Hugging Face writes them.</summary>
public sealed class WordLevelTokenizerTests
{
    [Fact]
    public void Saved_file_loads_back_and_encodes_with_bos()
    {
        using var dir = new TempFolder();
        var tok = WordLevelTokenizer.Create(["<unk>", "<bos>", "<eos>", "the", "dog", "runs", "."], "<unk>", "<bos>", "<eos>", addsBos: true);
        tok.Save(dir.File("tokenizer.json"));
        var loaded = TokenizerLoader.Load(dir.Path);
        Assert.IsType<WordLevelTokenizer>(loaded);
        Assert.Equal([1, 3, 4, 5, 6], loaded.Encode("the dog  runs ."));
        Assert.Equal([1, 3, 0], loaded.Encode("the cat"));
        Assert.Equal("the dog runs .", loaded.Decode([3, 4, 5, 6]));
        Assert.Equal((1, 2, 7), (loaded.BosId!.Value, loaded.EosId!.Value, loaded.VocabSize));
        Assert.Throws<ArgumentOutOfRangeException>(() => loaded.Decode([7]));
    }

    [Fact]
    public void Hugging_face_style_file_is_read_by_its_fields_not_our_writer()
    {
        // Written by hand in the layout `tokenizers` saves (WordLevel + WhitespaceSplit + TemplateProcessing).
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("tokenizer.json"), """
            {"version":"1.0","added_tokens":[{"id":0,"content":"[UNK]","special":true},{"id":1,"content":"[CLS]","special":true}],
             "pre_tokenizer":{"type":"WhitespaceSplit"},
             "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[],"special_tokens":{}},
             "model":{"type":"WordLevel","vocab":{"[UNK]":0,"[CLS]":1,"a":2,"b":3},"unk_token":"[UNK]"}}
            """);
        var tok = TokenizerLoader.Load(dir.File("tokenizer.json"));
        Assert.Equal([1, 2, 3, 0], tok.Encode("a b c"));
        Assert.True(tok.AddsBos);
    }

    [Theory]
    [InlineData("""{"model":{"type":"WordLevel","vocab":{"a":0,"b":2}}}""", "without gaps")]
    [InlineData("""{"model":{"type":"WordLevel","vocab":{"a":"x"}}}""", "non-negative integer id")]
    [InlineData("""{"model":{"type":"WordLevel"}}""", "model.vocab")]
    [InlineData("""{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"WordLevel","vocab":{"a":0}}}""", "not supported for WordLevel")]
    [InlineData("""{"model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"<unk>"}}""", "not in the vocabulary")]
    public void Bad_wordlevel_files_fail_clearly(string json, string problem)
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("tokenizer.json"), json);
        var e = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir.File("tokenizer.json")));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Fact]
    public void Unknown_word_without_unk_token_is_an_error_naming_it()
    {
        var tok = WordLevelTokenizer.Create(["a", "b"], null, null, null, addsBos: false);
        Assert.Contains("'zebra' is not in this tokenizer's vocabulary", Assert.Throws<ArgumentException>(() => tok.Encode("a zebra")).Message);
        _ = JsonSerializer.Serialize(tok.Words);
    }
}
