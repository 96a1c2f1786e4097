using System.Text.Json;

namespace InterpMesh.Runtime.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> with a <c>WordLevel</c> model and whitespace splitting: one
/// id per whitespace-separated word, unknown words map to the <c>unk_token</c>. The toy models'
/// symbolic vocabularies use it; Hugging Face's <c>tokenizers</c> loads the same file.
/// A <c>TemplateProcessing</c> post-processor that starts with a special token makes it the BOS.
/// </summary>
public sealed class WordLevelTokenizer : ITextTokenizer
{
    private readonly Dictionary<string, int> vocab;
    private readonly string[] words;
    private readonly int? unk;

    private WordLevelTokenizer(Dictionary<string, int> vocab, string[] words, int? unk, int? bos, int? eos, bool addsBos)
    {
        this.vocab = vocab;
        this.words = words;
        this.unk = unk;
        BosId = bos;
        EosId = eos;
        AddsBos = addsBos;
    }

    public int VocabSize => words.Length;
    public int? BosId { get; }
    public int? EosId { get; }
    public bool AddsBos { get; }

    /// <summary>The vocabulary in id order.</summary>
    public IReadOnlyList<string> Words => words;

    /// <summary>Builds a tokenizer in memory (the toy-model trainer writes it out with <see cref="Save"/>).</summary>
    public static WordLevelTokenizer Create(IReadOnlyList<string> words, string? unkToken, string? bosToken, string? eosToken, bool addsBos)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < words.Count; i++)
        {
            if (string.IsNullOrWhiteSpace(words[i]) || words[i].Any(char.IsWhiteSpace))
                throw new ArgumentException($"word-level token {i} ('{words[i]}') is empty or contains whitespace");
            if (!vocab.TryAdd(words[i], i))
                throw new ArgumentException($"word-level token '{words[i]}' appears twice");
        }
        int? Id(string? token) => token is null ? null : vocab.TryGetValue(token, out int id) ? id
            : throw new ArgumentException($"special token '{token}' is not in the vocabulary");
        return new WordLevelTokenizer(vocab, [.. words], Id(unkToken), Id(bosToken), Id(eosToken), addsBos && bosToken is not null);
    }

    public static bool IsWordLevel(JsonElement root) =>
        root.ValueKind == JsonValueKind.Object && root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.Object
        && m.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == "WordLevel";

    /// <summary>Loads a WordLevel <c>tokenizer.json</c>.</summary>
    public static WordLevelTokenizer FromTokenizerJson(string path)
    {
        using var doc = TokenizerFiles.ParseJson(path);
        var root = doc.RootElement;
        if (!IsWordLevel(root))
            throw new ModelFormatException(path, "expected a tokenizer.json whose \"model\" has type \"WordLevel\"");
        var model = root.GetProperty("model");
        if (!model.TryGetProperty("vocab", out var v) || v.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, "\"model.vocab\" is missing or is not a JSON object of word → id");
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object
            && pre.TryGetProperty("type", out var pt) && pt.GetString() is not ("WhitespaceSplit" or "Whitespace"))
            throw new ModelFormatException(path, $"pre_tokenizer \"{pt.GetString()}\" is not supported for WordLevel; expected WhitespaceSplit");

        var pairs = new List<(string Word, int Id)>();
        foreach (var p in v.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw new ModelFormatException(path, $"vocabulary entry '{p.Name}' must map to a non-negative integer id");
            pairs.Add((p.Name, id));
        }
        if (pairs.Count == 0)
            throw new ModelFormatException(path, "the vocabulary is empty");
        var byId = pairs.OrderBy(p => p.Id).ToList();
        for (int i = 0; i < byId.Count; i++)
        {
            if (byId[i].Id != i)
                throw new ModelFormatException(path, $"vocabulary ids must be 0..{byId.Count - 1} without gaps or repeats; id {i} is {(byId[i].Id > i ? "missing" : "repeated")}");
        }
        string? unkToken = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;
        var (bosToken, addsBos) = ReadTemplateBos(root);
        string? eosToken = byId.Select(p => p.Word).FirstOrDefault(w => w is "<eos>" or "</s>" or "<|endoftext|>");
        try
        {
            return Create(byId.Select(p => p.Word).ToList(), unkToken, bosToken ?? byId.Select(p => p.Word).FirstOrDefault(w => w is "<bos>" or "<s>"), eosToken, addsBos);
        }
        catch (ArgumentException e)
        {
            throw new ModelFormatException(path, e.Message, e);
        }
    }

    private static (string? Token, bool Adds) ReadTemplateBos(JsonElement root)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind != JsonValueKind.Object
            || !pp.TryGetProperty("type", out var type) || type.GetString() != "TemplateProcessing"
            || !pp.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array || single.GetArrayLength() == 0)
            return (null, false);
        var first = single[0];
        return first.TryGetProperty("SpecialToken", out var st) && st.TryGetProperty("id", out var id) && id.ValueKind == JsonValueKind.String
            ? (id.GetString(), true) : (null, false);
    }

    /// <summary>Writes a Hugging Face <c>tokenizer.json</c> (WordLevel, WhitespaceSplit, BOS template).</summary>
    public void Save(string path)
    {
        var vocabJson = words.Select((w, i) => (w, i)).ToDictionary(p => p.w, p => p.i);
        var specials = new[] { unk, BosId, EosId }.Where(i => i is not null).Select(i => i!.Value).Distinct().ToList();
        object? postProcessor = AddsBos && BosId is int b
            ? new Dictionary<string, object>
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new object[] { new { SpecialToken = new { id = words[b], type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } } },
                ["pair"] = new object[] { new { SpecialToken = new { id = words[b], type_id = 0 } }, new { Sequence = new { id = "A", type_id = 0 } }, new { Sequence = new { id = "B", type_id = 1 } } },
                ["special_tokens"] = new Dictionary<string, object> { [words[b]] = new { id = words[b], ids = new[] { b }, tokens = new[] { words[b] } } },
            }
            : null;
        var doc = new Dictionary<string, object?>
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = specials.Select(i => new { id = i, content = words[i], single_word = false, lstrip = false, rstrip = false, normalized = false, special = true }).ToArray(),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new { type = "WhitespaceSplit" },
            ["post_processor"] = postProcessor,
            ["decoder"] = null,
            ["model"] = new Dictionary<string, object?> { ["type"] = "WordLevel", ["vocab"] = vocabJson, ["unk_token"] = unk is int ui ? words[ui] : null },
        };
        File.WriteAllText(path, JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
    }

    public int[] Encode(string text)
    {
        var parts = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        var ids = new List<int>(parts.Length + 1);
        if (AddsBos && BosId is int b)
            ids.Add(b);
        foreach (var w in parts)
        {
            if (vocab.TryGetValue(w, out int id))
                ids.Add(id);
            else
                ids.Add(unk ?? throw new ArgumentException($"'{w}' is not in this tokenizer's vocabulary (and it has no unk_token); known words: {string.Join(' ', words.Take(12))} …"));
        }
        return [.. ids];
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        foreach (var id in ids)
        {
            if (id < 0 || id >= words.Length)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"token id {id} is outside the vocabulary (0..{words.Length - 1})");
        }
        return string.Join(' ', ids.Select(i => words[i]));
    }
}
