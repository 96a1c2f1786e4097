namespace InterpMesh.Runtime.Tokenization;

/// <summary>Picks the tokenizer implementation for a file or a model directory.</summary>
public static class TokenizerLoader
{
    private const string Supported =
        "tokenizer.json (byte-level BPE or WordLevel), vocab.json + merges.txt, encoder.json + vocab.bpe, " +
        "tokenizer.model / *.model (SentencePiece) or tok*.bin (llama2.c)";

    /// <summary>
    /// Loads a tokenizer from <paramref name="path"/>. A file is recognised by its name:
    /// <c>*.json</c> other than vocab.json/encoder.json is a Hugging Face tokenizer.json;
    /// <c>vocab.json</c> and <c>encoder.json</c> need <c>merges.txt</c> / <c>vocab.bpe</c> beside
    /// them; <c>*.model</c> is SentencePiece; <c>*.bin</c> is a llama2.c tokenizer. A directory is
    /// searched for, in order: tokenizer.json, vocab.json + merges.txt, encoder.json + vocab.bpe,
    /// tokenizer.model, tok*.bin.
    /// </summary>
    /// <exception cref="ModelFormatException">Nothing usable is found, or the file is malformed.</exception>
    public static ITextTokenizer Load(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return Directory.Exists(path) ? LoadDirectory(path) : LoadFile(path);
    }

    /// <summary>Whether a model folder holds any tokenizer file <see cref="Load"/> would look for.</summary>
    public static bool HasTokenizer(string folder) =>
        Directory.Exists(folder)
        && (new[] { "tokenizer.json", "vocab.json", "encoder.json", "tokenizer.model" }.Any(f => File.Exists(Path.Combine(folder, f)))
            || Directory.GetFiles(folder, "tok*.bin").Length > 0);

    private static ITextTokenizer LoadFile(string path)
    {
        TokenizerFiles.EnsureExists(path);
        string name = Path.GetFileName(path);
        string dir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        string ext = Path.GetExtension(name).ToLowerInvariant();

        if (name.Equals("vocab.json", StringComparison.OrdinalIgnoreCase))
        {
            return FromPair(path, Path.Combine(dir, "merges.txt"));
        }

        if (name.Equals("encoder.json", StringComparison.OrdinalIgnoreCase))
        {
            return FromPair(path, Path.Combine(dir, "vocab.bpe"));
        }

        return ext switch
        {
            ".json" => FromTokenizerJson(path),
            ".model" => SentencePieceModelTokenizer.FromFile(path),
            ".bin" => Llama2CTokenizer.FromFile(path),
            _ => throw new ModelFormatException(path, $"is not a recognised tokenizer file; expected {Supported}."),
        };
    }

    /// <summary>A tokenizer.json: WordLevel (symbolic vocabularies) or byte-level BPE.</summary>
    private static ITextTokenizer FromTokenizerJson(string path)
    {
        bool wordLevel;
        using (var doc = TokenizerFiles.ParseJson(path))
            wordLevel = WordLevelTokenizer.IsWordLevel(doc.RootElement);
        return wordLevel ? WordLevelTokenizer.FromTokenizerJson(path) : ByteLevelBpeTokenizer.FromTokenizerJson(path);
    }

    private static ByteLevelBpeTokenizer FromPair(string vocabPath, string mergesPath)
    {
        if (!File.Exists(mergesPath))
        {
            throw new ModelFormatException(vocabPath,
                $"needs its merges file {Path.GetFileName(mergesPath)} in the same directory, and it was not found ({mergesPath}).");
        }

        return ByteLevelBpeTokenizer.FromVocabAndMerges(vocabPath, mergesPath);
    }

    private static ITextTokenizer LoadDirectory(string dir)
    {
        string In(string file) => Path.Combine(dir, file);

        if (File.Exists(In("tokenizer.json")))
        {
            try
            {
                return FromTokenizerJson(In("tokenizer.json"));
            }
            catch (ModelFormatException) when (File.Exists(In("tokenizer.model")))
            {
                // Llama-family folders ship a SentencePiece-style tokenizer.json this reader does
                // not take; their tokenizer.model encodes the same way.
                return SentencePieceModelTokenizer.FromFile(In("tokenizer.model"));
            }
        }

        if (File.Exists(In("vocab.json")) && File.Exists(In("merges.txt")))
        {
            return ByteLevelBpeTokenizer.FromVocabAndMerges(In("vocab.json"), In("merges.txt"));
        }

        if (File.Exists(In("encoder.json")) && File.Exists(In("vocab.bpe")))
        {
            return ByteLevelBpeTokenizer.FromVocabAndMerges(In("encoder.json"), In("vocab.bpe"));
        }

        if (File.Exists(In("tokenizer.model")))
        {
            return SentencePieceModelTokenizer.FromFile(In("tokenizer.model"));
        }

        string[] bins;
        try
        {
            bins = Directory.GetFiles(dir, "tok*.bin");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(dir, $"cannot be listed: {e.Message}", e);
        }

        if (bins.Length == 1)
        {
            return Llama2CTokenizer.FromFile(bins[0]);
        }

        if (bins.Length > 1)
        {
            Array.Sort(bins, StringComparer.Ordinal);
            throw new ModelFormatException(dir,
                $"holds several llama2.c tokenizers ({string.Join(", ", bins.Select(Path.GetFileName))}); pass the file to use.");
        }

        // Name a half-present pair explicitly: "no tokenizer" would hide that only one file is missing.
        string hint = File.Exists(In("vocab.json")) ? " (vocab.json is present but merges.txt is missing)"
            : File.Exists(In("encoder.json")) ? " (encoder.json is present but vocab.bpe is missing)"
            : string.Empty;
        throw new ModelFormatException(dir, $"contains no tokenizer{hint}; expected {Supported}.");
    }
}
