namespace InterpMesh.Runtime.Tokenization;

/// <summary>Turns text into token ids and back, with the semantics of the model's own format.</summary>
public interface ITextTokenizer
{
    /// <summary>Number of ids the tokenizer can produce (ids are 0 .. VocabSize-1).</summary>
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, or null when the format has none (GPT-2 uses &lt;|endoftext|&gt; for both).</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id, or null.</summary>
    int? EosId { get; }

    /// <summary>Whether <see cref="Encode(string)"/> prepends BOS, as the model's reference encoder does.</summary>
    bool AddsBos { get; }

    /// <summary>Encodes text the way the format's reference implementation does (BOS included when <see cref="AddsBos"/>).</summary>
    int[] Encode(string text);

    /// <summary>Decodes ids to text. Throws <see cref="ArgumentOutOfRangeException"/> for an id outside the vocabulary.</summary>
    string Decode(IReadOnlyList<int> ids);
}
