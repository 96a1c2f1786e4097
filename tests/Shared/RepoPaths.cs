namespace InterpMesh.Tests;

/// <summary>
/// Locates checked-in test data. Tests read models and fixtures from the repository (never from a
/// machine-specific location), found by walking up from the test binary to InterpMesh.sln.
/// Compiled into every test project (see Directory.Build.props in tests/).
/// </summary>
internal static class RepoPaths
{
    /// <summary>The repository root (the directory holding InterpMesh.sln).</summary>
    public static string Root { get; } = FindRoot();

    /// <summary>A path under <c>models/</c>.</summary>
    public static string Models(string relative) => Path.Combine(Root, "models", relative);

    /// <summary>A path under <c>tests/fixtures/</c>.</summary>
    public static string Fixture(string relative) => Path.Combine(Root, "tests", "fixtures", relative);

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "InterpMesh.sln")))
                return dir.FullName;
        }
        throw new InvalidOperationException($"No directory containing InterpMesh.sln above {AppContext.BaseDirectory}; tests must run from a checkout.");
    }
}
