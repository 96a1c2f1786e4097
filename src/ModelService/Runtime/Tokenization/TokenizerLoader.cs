namespace InterpMesh.Runtime.Tokenization;
// TEMPORARY placeholder replaced by the tokenizer work.
public static class TokenizerLoader
{
    public static bool HasTokenizer(string folder) => false;
    public static ITextTokenizer Load(string path) => throw new NotSupportedException(path);
}
