namespace InterpMesh.Runtime;

/// <summary>
/// A model, weight or tokenizer file that cannot be used. The message always names the file and
/// says what is wrong with it, so a user can fix the input without reading a stack trace.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string path, string problem)
        : base($"{path}: {problem}")
    {
        FilePath = path;
        Problem = problem;
    }

    public ModelFormatException(string path, string problem, Exception inner)
        : base($"{path}: {problem}", inner)
    {
        FilePath = path;
        Problem = problem;
    }

    /// <summary>The file (or folder) that was being read.</summary>
    public string FilePath { get; }

    /// <summary>What is wrong with it, in words a user can act on.</summary>
    public string Problem { get; }
}
