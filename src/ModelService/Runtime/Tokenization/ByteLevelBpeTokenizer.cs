using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace InterpMesh.Runtime.Tokenization;

/// <summary>
/// GPT-2 style byte-level BPE, read from <c>vocab.json</c> + <c>merges.txt</c> (or OpenAI's
/// <c>encoder.json</c> + <c>vocab.bpe</c>) or from a Hugging Face <c>tokenizer.json</c> with a
/// byte-level BPE model. Encoding follows Hugging Face: no BOS is added, and added/special tokens
/// such as <c>&lt;|endoftext|&gt;</c> written in the text are recognised as single ids.
/// </summary>
public sealed class ByteLevelBpeTokenizer : ITextTokenizer
{
    /// <summary>GPT-2's pre-tokenisation pattern. Without it the BPE sees whole lines and spaces are lost.</summary>
    internal const string Gpt2Pattern =
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    // Names that mean "end of text" / "start of text" across byte-level BPE families. GPT-2 uses
    // <|endoftext|> for both; the first name found in the vocabulary wins.
    private static readonly string[] EosCandidates = ["<|endoftext|>", "<|end_of_text|>", "</s>"];
    private static readonly string[] BosCandidates = ["<|endoftext|>", "<|begin_of_text|>", "<s>"];

    private readonly BpeTokenizer bpe;
    private readonly bool[] known;

    private ByteLevelBpeTokenizer(
        BpeTokenizer bpe, bool[] known, int? bosId, int? eosId, bool addsBos)
    {
        this.bpe = bpe;
        this.known = known;
        BosId = bosId;
        EosId = eosId;
        AddsBos = addsBos;
    }

    /// <inheritdoc/>
    public int VocabSize => known.Length;

    /// <inheritdoc/>
    public int? BosId { get; }

    /// <inheritdoc/>
    public int? EosId { get; }

    /// <inheritdoc/>
    public bool AddsBos { get; }

    /// <inheritdoc/>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = bpe.EncodeToIds(text);
        if (!AddsBos || BosId is not int bos)
        {
            return [.. ids];
        }

        var result = new int[ids.Count + 1];
        result[0] = bos;
        for (int i = 0; i < ids.Count; i++)
        {
            result[i + 1] = ids[i];
        }

        return result;
    }

    /// <inheritdoc/>
    public string Decode(IReadOnlyList<int> ids)
    {
        TokenIdValidation.EnsureKnown(ids, known.Length, id => known[id]);
        // considerSpecialTokens: true keeps "<|endoftext|>" in the text, as Hugging Face's decode
        // does by default; dropping it would make a document boundary invisible.
        return bpe.Decode(ids, considerSpecialTokens: true);
    }

    /// <summary>Loads <c>vocab.json</c> + <c>merges.txt</c> (or <c>encoder.json</c> + <c>vocab.bpe</c>).</summary>
    /// <exception cref="ModelFormatException">Either file is missing or malformed.</exception>
    public static ByteLevelBpeTokenizer FromVocabAndMerges(string vocabPath, string mergesPath)
    {
        ArgumentNullException.ThrowIfNull(vocabPath);
        ArgumentNullException.ThrowIfNull(mergesPath);
        TokenizerFiles.EnsureExists(vocabPath);
        TokenizerFiles.EnsureExists(mergesPath);

        Dictionary<string, int> vocab;
        using (var doc = TokenizerFiles.ParseJson(vocabPath))
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ModelFormatException(vocabPath,
                    $"expected a JSON object mapping token strings to ids, found a JSON {doc.RootElement.ValueKind}.");
            }

            vocab = ReadVocab(vocabPath, doc.RootElement, "the top-level object");
        }

        var merges = ReadMergesText(mergesPath);
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        // GPT-2's vocab.json carries <|endoftext|> as an ordinary entry; Hugging Face treats it as a
        // special token, so it is split out of the text before BPE runs.
        foreach (var name in EosCandidates.Concat(BosCandidates))
        {
            if (vocab.TryGetValue(name, out int id))
            {
                special[name] = id;
            }
        }

        return Build(vocabPath, vocab, merges, special, GetFirst(vocab, BosCandidates), addsBos: false, Gpt2Pattern);
    }

    /// <summary>Loads a Hugging Face <c>tokenizer.json</c> whose model is byte-level BPE.</summary>
    /// <exception cref="ModelFormatException">The file is missing, not JSON, or not a byte-level BPE tokenizer.</exception>
    public static ByteLevelBpeTokenizer FromTokenizerJson(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        TokenizerFiles.EnsureExists(path);
        using var doc = TokenizerFiles.ParseJson(path);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object
            || !root.TryGetProperty("model", out var model)
            || model.ValueKind != JsonValueKind.Object)
        {
            throw new ModelFormatException(path,
                "expected a Hugging Face tokenizer.json: a JSON object with a \"model\" object (type \"BPE\", \"vocab\", \"merges\").");
        }

        string? type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        if (type is not null && type != "BPE")
        {
            throw new ModelFormatException(path,
                $"tokenizer model type \"{type}\" is not supported here; expected \"BPE\" (byte-level, GPT-2 style). " +
                "SentencePiece models load from tokenizer.model instead.");
        }

        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
        {
            throw new ModelFormatException(path, "\"model.vocab\" is missing or is not a JSON object of token → id.");
        }

        if (!model.TryGetProperty("merges", out var mergesEl) || mergesEl.ValueKind != JsonValueKind.Array)
        {
            throw new ModelFormatException(path,
                "\"model.merges\" is missing or is not a JSON array of \"a b\" strings or [\"a\", \"b\"] pairs.");
        }

        string pattern = ReadPreTokenizerPattern(path, root);
        var vocab = ReadVocab(path, vocabEl, "\"model.vocab\"");
        var merges = ReadMergesJson(path, mergesEl);
        var added = ReadAddedTokens(path, root);
        var (templateBos, addsBos) = ReadBosTemplate(root, added, vocab);

        // Added tokens may sit outside model.vocab; BpeTokenizer only maps what its vocabulary holds,
        // so they are merged in (ids from added_tokens win, as in Hugging Face).
        foreach (var (content, id) in added)
        {
            vocab[content] = id;
        }

        int? bos = templateBos ?? GetFirst(vocab, BosCandidates);
        return Build(path, vocab, merges, added, bos, addsBos, pattern);
    }

    private static ByteLevelBpeTokenizer Build(
        string path,
        Dictionary<string, int> vocab,
        List<string> merges,
        Dictionary<string, int> special,
        int? bosId,
        bool addsBos,
        string pattern)
    {
        if (vocab.Count == 0)
        {
            throw new ModelFormatException(path, "the vocabulary is empty; expected token → id entries.");
        }

        int maxId = -1;
        foreach (var (token, id) in vocab)
        {
            if (id < 0)
            {
                throw new ModelFormatException(path, $"token \"{token}\" has negative id {id}; ids must be 0 or more.");
            }

            maxId = Math.Max(maxId, id);
        }

        // Ids are stored as an index, so a lying id would allocate; no real BPE vocabulary has
        // gaps anywhere near this large.
        if (maxId >= vocab.Count * 4L + 1024)
        {
            throw new ModelFormatException(path,
                $"token id {maxId} is far beyond the vocabulary's {vocab.Count} entries; ids are expected to be dense.");
        }

        var known = new bool[maxId + 1];
        foreach (var id in vocab.Values)
        {
            known[id] = true;
        }

        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = special,
            // The pre-tokenizer must know the special tokens too, or it splits "<|endoftext|>" into
            // punctuation and words before the BPE could see it whole.
            PreTokenizer = new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), special),
        };

        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(options);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new ModelFormatException(path, $"the BPE vocabulary and merges are inconsistent: {e.Message}", e);
        }

        return new ByteLevelBpeTokenizer(bpe, known, bosId, GetFirst(vocab, EosCandidates), addsBos);
    }

    private static int? GetFirst(Dictionary<string, int> vocab, string[] names)
    {
        foreach (var name in names)
        {
            if (vocab.TryGetValue(name, out int id))
            {
                return id;
            }
        }

        return null;
    }

    private static Dictionary<string, int> ReadVocab(string path, JsonElement obj, string where)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var prop in obj.EnumerateObject())
        {
            if (prop.Value.ValueKind != JsonValueKind.Number || !prop.Value.TryGetInt32(out int id))
            {
                throw new ModelFormatException(path,
                    $"in {where}, token \"{prop.Name}\" maps to {prop.Value.ValueKind} \"{Shorten(prop.Value.GetRawText())}\"; expected an integer id.");
            }

            vocab[prop.Name] = id;
        }

        return vocab;
    }

    private static List<string> ReadMergesText(string path)
    {
        var merges = new List<string>();
        int lineNo = 0;
        foreach (var line in TokenizerFiles.ReadLines(path))
        {
            lineNo++;
            // The first line of OpenAI's vocab.bpe is "#version: 0.2"; blank lines end some files.
            if (line.Length == 0 || (lineNo == 1 && line.StartsWith("#version", StringComparison.Ordinal)))
            {
                continue;
            }

            int space = line.IndexOf(' ', StringComparison.Ordinal);
            if (space <= 0 || space == line.Length - 1 || line.IndexOf(' ', space + 1) >= 0)
            {
                throw new ModelFormatException(path,
                    $"line {lineNo} \"{Shorten(line)}\" is not a merge; expected two tokens separated by one space.");
            }

            merges.Add(line);
        }

        return merges;
    }

    private static List<string> ReadMergesJson(string path, JsonElement array)
    {
        var merges = new List<string>(array.GetArrayLength());
        int index = 0;
        foreach (var item in array.EnumerateArray())
        {
            string? merge = null;
            if (item.ValueKind == JsonValueKind.String)
            {
                string s = item.GetString()!;
                int space = s.IndexOf(' ', StringComparison.Ordinal);
                if (space > 0 && space < s.Length - 1)
                {
                    merge = s;
                }
            }
            else if (item.ValueKind == JsonValueKind.Array && item.GetArrayLength() == 2
                     && item[0].ValueKind == JsonValueKind.String && item[1].ValueKind == JsonValueKind.String)
            {
                string a = item[0].GetString()!, b = item[1].GetString()!;
                // BpeOptions takes merges as "a b" lines; a space inside a piece cannot be expressed.
                // Byte-level pieces never hold a raw space (it is written "Ġ"), so this only rejects
                // files that are not byte-level anyway.
                if (a.Length > 0 && b.Length > 0 && !a.Contains(' ', StringComparison.Ordinal) && !b.Contains(' ', StringComparison.Ordinal))
                {
                    merge = a + " " + b;
                }
            }

            if (merge is null)
            {
                throw new ModelFormatException(path,
                    $"\"model.merges\"[{index}] is {Shorten(item.GetRawText())}; expected \"a b\" or [\"a\", \"b\"] with non-empty, space-free pieces.");
            }

            merges.Add(merge);
            index++;
        }

        return merges;
    }

    private static Dictionary<string, int> ReadAddedTokens(string path, JsonElement root)
    {
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (!root.TryGetProperty("added_tokens", out var list) || list.ValueKind == JsonValueKind.Null)
        {
            return added;
        }

        if (list.ValueKind != JsonValueKind.Array)
        {
            throw new ModelFormatException(path, "\"added_tokens\" must be a JSON array of {\"id\", \"content\"} objects.");
        }

        int index = 0;
        foreach (var item in list.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object
                || !item.TryGetProperty("id", out var idEl) || !idEl.TryGetInt32(out int id) || id < 0
                || !item.TryGetProperty("content", out var contentEl) || contentEl.ValueKind != JsonValueKind.String
                || string.IsNullOrEmpty(contentEl.GetString()))
            {
                throw new ModelFormatException(path,
                    $"\"added_tokens\"[{index}] is {Shorten(item.GetRawText())}; expected an object with a non-negative integer \"id\" and a non-empty string \"content\".");
            }

            added[contentEl.GetString()!] = id;
            index++;
        }

        return added;
    }

    /// <summary>
    /// Finds the split pattern. Only byte-level pre-tokenisation is supported: the GPT-2 pattern
    /// (ByteLevel with use_regex) or a Split regex followed by ByteLevel (Llama 3, Qwen style).
    /// Anything else would silently give different ids, so it is rejected.
    /// </summary>
    private static string ReadPreTokenizerPattern(string path, JsonElement root)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pre) || pre.ValueKind != JsonValueKind.Object)
        {
            throw new ModelFormatException(path,
                "\"pre_tokenizer\" is missing; expected a byte-level BPE tokenizer (pre_tokenizer type \"ByteLevel\", GPT-2 style).");
        }

        var steps = new List<JsonElement>();
        if (TypeOf(pre) == "Sequence" && pre.TryGetProperty("pretokenizers", out var seq) && seq.ValueKind == JsonValueKind.Array)
        {
            steps.AddRange(seq.EnumerateArray());
        }
        else
        {
            steps.Add(pre);
        }

        string? splitPattern = null;
        bool byteLevel = false, byteLevelRegex = false;
        foreach (var step in steps)
        {
            string? type = TypeOf(step);
            if (type == "ByteLevel")
            {
                byteLevel = true;
                // Hugging Face defaults use_regex to true when the field is absent.
                byteLevelRegex = !step.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False;
            }
            else if (type == "Split" && splitPattern is null
                     && step.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object
                     && p.TryGetProperty("Regex", out var rx) && rx.ValueKind == JsonValueKind.String
                     && (!step.TryGetProperty("behavior", out var beh) || beh.GetString() == "Isolated")
                     && (!step.TryGetProperty("invert", out var inv) || inv.ValueKind == JsonValueKind.False))
            {
                splitPattern = rx.GetString();
            }
            else
            {
                throw new ModelFormatException(path,
                    $"pre_tokenizer step \"{type ?? "?"}\" is not supported; expected byte-level BPE (\"ByteLevel\", optionally after an isolating \"Split\" regex).");
            }
        }

        if (!byteLevel)
        {
            throw new ModelFormatException(path,
                "the pre_tokenizer has no \"ByteLevel\" step, so this is not a byte-level (GPT-2 style) BPE tokenizer.");
        }

        if (splitPattern is not null && !byteLevelRegex)
        {
            try
            {
                _ = new Regex(splitPattern);
            }
            catch (ArgumentException e)
            {
                throw new ModelFormatException(path, $"the Split pre_tokenizer regex is not usable in .NET: {e.Message}", e);
            }

            return splitPattern;
        }

        if (splitPattern is null && byteLevelRegex)
        {
            return Gpt2Pattern;
        }

        throw new ModelFormatException(path,
            "expected exactly one split pattern: either \"ByteLevel\" with use_regex true, or a \"Split\" regex followed by \"ByteLevel\" with use_regex false.");
    }

    /// <summary>Reads whether the post-processor prepends a special token (as Llama 3's template does).</summary>
    private static (int? BosId, bool AddsBos) ReadBosTemplate(
        JsonElement root, Dictionary<string, int> added, Dictionary<string, int> vocab)
    {
        if (!root.TryGetProperty("post_processor", out var post) || post.ValueKind != JsonValueKind.Object)
        {
            return (null, false);
        }

        var processors = new List<JsonElement>();
        if (TypeOf(post) == "Sequence" && post.TryGetProperty("processors", out var seq) && seq.ValueKind == JsonValueKind.Array)
        {
            processors.AddRange(seq.EnumerateArray());
        }
        else
        {
            processors.Add(post);
        }

        foreach (var p in processors)
        {
            if (TypeOf(p) == "TemplateProcessing"
                && p.TryGetProperty("single", out var single) && single.ValueKind == JsonValueKind.Array
                && single.GetArrayLength() > 0
                && single[0].ValueKind == JsonValueKind.Object
                && single[0].TryGetProperty("SpecialToken", out var st)
                && st.TryGetProperty("id", out var name) && name.ValueKind == JsonValueKind.String)
            {
                string token = name.GetString()!;
                if (added.TryGetValue(token, out int id) || vocab.TryGetValue(token, out id))
                {
                    return (id, true);
                }
            }
        }

        return (null, false);
    }

    private static string? TypeOf(JsonElement e) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String
            ? t.GetString()
            : null;

    private static string Shorten(string s) => s.Length <= 60 ? s : string.Concat(s.AsSpan(0, 57), "...");
}
