using Microsoft.ML.Tokenizers;

namespace InterpMesh.Runtime.Tokenization;

/// <summary>
/// A SentencePiece <c>tokenizer.model</c> with Hugging Face Llama semantics: BOS is prepended,
/// and the model's own normaliser applies (so repeated, leading and trailing spaces may be folded).
/// For llama2.c checkpoints use <see cref="Llama2CTokenizer"/>, whose run.c encoder keeps spaces.
/// </summary>
public sealed class SentencePieceModelTokenizer : ITextTokenizer
{
    private readonly LlamaTokenizer sp;

    private SentencePieceModelTokenizer(LlamaTokenizer sp, int vocabSize)
    {
        this.sp = sp;
        VocabSize = vocabSize;
    }

    /// <inheritdoc/>
    public int VocabSize { get; }

    /// <inheritdoc/>
    public int? BosId => sp.BeginningOfSentenceId;

    /// <inheritdoc/>
    public int? EosId => sp.EndOfSentenceId;

    /// <inheritdoc/>
    public bool AddsBos => true;

    /// <inheritdoc/>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        // BOS is added here rather than by the library: in 2.0.1 some inputs (e.g. "" or text that
        // normalises to one character) come back without it, while HF Llama always prepends BOS.
        var ids = sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
        string trimmed = text.Trim(' ');
        if (ids.Count == 0 && trimmed.Length > 0)
        {
            // 2.0.1 drops any input that normalises to a single character ("a" gives nothing).
            // Non-blank text never legitimately encodes to nothing, so redo what the normaliser
            // would have produced (dummy prefix, spaces as "▁") with normalisation switched off.
            ids = sp.EncodeToIds(
                "\u2581" + trimmed.Replace(' ', '\u2581'),
                addBeginningOfSentence: false,
                addEndOfSentence: false,
                considerPreTokenization: false,
                considerNormalization: false);
        }

        var result = new int[ids.Count + 1];
        result[0] = sp.BeginningOfSentenceId;
        for (int i = 0; i < ids.Count; i++)
        {
            result[i + 1] = ids[i];
        }

        return result;
    }

    /// <inheritdoc/>
    public string Decode(IReadOnlyList<int> ids)
    {
        TokenIdValidation.EnsureKnown(ids, VocabSize);
        return sp.Decode(ids) ?? string.Empty;
    }

    /// <summary>Loads a SentencePiece model protobuf (<c>tokenizer.model</c>).</summary>
    /// <exception cref="ModelFormatException">The file is missing or is not a usable SentencePiece model.</exception>
    public static SentencePieceModelTokenizer FromFile(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var bytes = TokenizerFiles.ReadAllBytes(path);
        LlamaTokenizer sp;
        try
        {
            using var stream = new MemoryStream(bytes, writable: false);
            sp = LlamaTokenizer.Create(stream, addBeginOfSentence: true, addEndOfSentence: false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The protobuf reader reports corrupt input with several exception types
            // (InvalidProtocolBufferException, ArgumentException, ...); all mean the same to a user.
            throw new ModelFormatException(path,
                $"is not a readable SentencePiece model (expected a tokenizer.model protobuf): {e.Message}", e);
        }

        int count = sp.Vocabulary.Count;
        if (count == 0)
        {
            throw new ModelFormatException(path, "is a SentencePiece model with no pieces; expected a trained vocabulary.");
        }

        int maxId = sp.Vocabulary.Values.Max();
        int vocabSize = Math.Max(count, maxId + 1);
        foreach (var (name, id) in new[] { ("BOS", sp.BeginningOfSentenceId), ("EOS", sp.EndOfSentenceId), ("UNK", sp.UnknownId) })
        {
            if (id < 0 || id >= vocabSize)
            {
                throw new ModelFormatException(path,
                    $"{name} id {id} lies outside the vocabulary of {vocabSize} pieces; the model must define bos_id, eos_id and unk_id inside it.");
            }
        }

        // With byte fallback the library emits id(<0x00>) + byte for text no piece covers, so the
        // 256 byte pieces must all be there, in order; otherwise Encode would produce ids that name
        // no piece (or lie past the vocabulary).
        if (sp.ByteFallback)
        {
            var vocabulary = sp.Vocabulary;
            bool complete = vocabulary.TryGetValue("<0x00>", out int first);
            for (int b = 1; complete && b < 256; b++)
            {
                complete = vocabulary.TryGetValue($"<0x{b:X2}>", out int id) && id == first + b;
            }

            if (!complete)
            {
                throw new ModelFormatException(path,
                    "has byte_fallback on but not the 256 byte pieces <0x00>..<0xFF> at consecutive ids; the model is truncated or corrupt.");
            }
        }

        return new SentencePieceModelTokenizer(sp, vocabSize);
    }
}
