namespace InterpMesh.Runtime.Tokenization;

/// <summary>Shared argument checks for <see cref="ITextTokenizer.Decode"/> implementations.</summary>
internal static class TokenIdValidation
{
    /// <summary>
    /// Throws for any id that does not name a token. Microsoft.ML.Tokenizers silently decodes such
    /// ids to "", which would hide a model/tokenizer mismatch, so every wrapper checks first.
    /// </summary>
    public static void EnsureKnown(IReadOnlyList<int> ids, int vocabSize, Func<int, bool>? isKnown = null)
    {
        ArgumentNullException.ThrowIfNull(ids);
        for (int i = 0; i < ids.Count; i++)
        {
            int id = ids[i];
            if (id < 0 || id >= vocabSize || (isKnown is not null && !isKnown(id)))
            {
                throw new ArgumentOutOfRangeException(
                    nameof(ids), id,
                    $"Token id {id} at position {i} is not in the tokenizer's vocabulary (valid ids are 0..{vocabSize - 1}).");
            }
        }
    }
}
