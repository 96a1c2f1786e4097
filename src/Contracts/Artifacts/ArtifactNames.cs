using System.Text.RegularExpressions;

namespace InterpMesh.Contracts.Artifacts;

/// <summary>
/// Artifact and file names. Checked before any path is built, so no name can reach outside the
/// store: segments are lower-case letters, digits, <c>-_.</c>, never <c>.</c> or <c>..</c>.
/// </summary>
public static partial class ArtifactNames
{
    public const int MaxLength = 200;

    /// <summary>Longest file name in an artifact.</summary>
    public const int MaxFileLength = 100;

    // \z, not $: $ also matches before a final newline, which let "name\n" through.
    [GeneratedRegex(@"\A[a-z0-9][a-z0-9._-]*\z")]
    private static partial Regex Segment();

    [GeneratedRegex(@"\A[A-Za-z0-9][A-Za-z0-9._-]*\z")]
    private static partial Regex FileName();

    /// <summary>Throws <see cref="ArgumentException"/> saying what is wrong with <paramref name="name"/>.</summary>
    public static void Check(string name)
    {
        if (string.IsNullOrEmpty(name))
            throw new ArgumentException("artifact name is empty; use something like probes/sentiment-l3");
        if (name.Length > MaxLength)
            throw new ArgumentException($"artifact name is {name.Length} characters long; the limit is {MaxLength}");
        foreach (var segment in name.Split('/'))
        {
            if (!Segment().IsMatch(segment) || segment.EndsWith(".artifact", StringComparison.Ordinal) || segment.Contains("..", StringComparison.Ordinal))
                throw new ArgumentException($"artifact name '{name}' is not allowed: use '/'-separated segments of lower-case letters, digits, '-', '_' and '.', each starting with a letter or digit (no '..', no absolute paths)");
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> unless <paramref name="file"/> is a plain file name.</summary>
    public static void CheckFile(string file)
    {
        if (file.Length > MaxFileLength)
            throw new ArgumentException($"artifact file name is {file.Length} characters long; the limit is {MaxFileLength}");
        if (string.IsNullOrEmpty(file) || !FileName().IsMatch(file) || file.Contains("..", StringComparison.Ordinal))
            throw new ArgumentException($"artifact file name '{file}' is not allowed: use letters, digits, '-', '_' and '.', starting with a letter or digit, no '/' (e.g. cfg.json)");
    }
}
