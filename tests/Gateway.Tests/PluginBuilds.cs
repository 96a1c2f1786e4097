using System.Diagnostics;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Builds plugins the way a third party does: the SDK is packed into a local feed, and
/// samples/TokenStatsPlugin and tests/plugins/Misbehaving — projects outside the solution's build
/// graph — restore it from there and build on their own. Done once per test run.
/// </summary>
public static class PluginBuilds
{
    private static readonly Lazy<Task<(string TokenStats, string Misbehaving, string MisbehavingV2)>> Built = new(BuildAsync);
    private static readonly Lazy<Task<string>> SampleTests = new(RunSampleTestsAsync);
    private static string feed = "";
    private static string version = "";

    /// <summary>The build outputs; <c>MisbehavingV2</c> is the same project built as assembly version 2.0.0 (for hot reload).</summary>
    public static Task<(string TokenStats, string Misbehaving, string MisbehavingV2)> OutputsAsync() => Built.Value;

    private static async Task<(string, string, string)> BuildAsync()
    {
        string work = TempFolders.Create("interpmesh-plugins-");
        feed = Path.Combine(work, "feed");
        // A version of its own, so a package cached by an earlier run is never used instead.
        version = $"2.0.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        foreach (var project in new[] { "src/Contracts", "src/Plugins/Abstractions" })
            await Pack(project);
        string tokenStats = Path.Combine(work, "token-stats");
        string misbehaving = Path.Combine(work, "misbehaving");
        foreach (var (project, output) in new[] { ("samples/TokenStatsPlugin", tokenStats), ("tests/plugins/Misbehaving", misbehaving) })
        {
            await Dotnet("build", Path.Combine(RepoPaths.Root, project), "-c", "Release", "-o", output, $"-p:InterpMeshSdkVersion={version}",
                $"-p:RestoreAdditionalProjectSources={feed}", "--nologo");
        }
        string v2 = Path.Combine(work, "misbehaving-v2");
        await Dotnet("build", Path.Combine(RepoPaths.Root, "tests/plugins/Misbehaving"), "-c", "Release", "-o", v2, $"-p:InterpMeshSdkVersion={version}",
            $"-p:RestoreAdditionalProjectSources={feed}", "-p:Version=2.0.0", "--nologo");
        return (tokenStats, misbehaving, v2);
    }

    /// <summary>
    /// The sample plugin's own unit tests (samples/TokenStatsPlugin.Tests), run as its author would:
    /// against the SDK and InterpMesh.Plugins.Testing packages from the local feed, nothing else
    /// from this repository. Returns the test run's output.
    /// </summary>
    public static Task<string> SampleTestsOutputAsync() => SampleTests.Value;

    private static async Task<string> RunSampleTestsAsync()
    {
        await OutputsAsync();
        // The testing package and what it brings: the runtime, the engine and the wire mapping.
        foreach (var project in new[] { "src/ModelService/Runtime", "src/ModelService/Engine", "src/ModelService/Wire", "src/Plugins/Testing" })
            await Pack(project);
        return await Dotnet(new Dictionary<string, string> { ["TOKENSTATS_MODEL"] = RepoPaths.Models("stories260K/stories260K.bin") },
            "test", Path.Combine(RepoPaths.Root, "samples/TokenStatsPlugin.Tests"), "-o", Path.Combine(Path.GetDirectoryName(feed)!, "token-stats-tests"),
            $"-p:InterpMeshSdkVersion={version}", $"-p:RestoreAdditionalProjectSources={feed}", "--nologo");
    }

    /// <summary>
    /// Packs a project at the test version. It builds in a tree of its own (the artifacts layout
    /// under the work folder): built in place, the recompiled DLLs would be written through the
    /// hard links the repository's outputs share (Directory.Build.props), changing assemblies this
    /// test process has already loaded (seen as BadImageFormatException in a mesh started after).
    /// </summary>
    private static Task<string> Pack(string project) =>
        Dotnet("pack", Path.Combine(RepoPaths.Root, project), "-c", "Release", "-o", feed, $"-p:Version={version}", "-p:IsPackable=true",
            "-p:UseArtifactsOutput=true", $"-p:ArtifactsPath={Path.Combine(Path.GetDirectoryName(feed)!, "artifacts")}", "--nologo");

    private static Task<string> Dotnet(params string[] args) => Dotnet(new Dictionary<string, string>(), args);

    private static async Task<string> Dotnet(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet", args) { RedirectStandardOutput = true, RedirectStandardError = true };
        // The test host's MSBuild variables must not leak into a separate build.
        foreach (var v in new[] { "MSBuildSDKsPath", "MSBuildExtensionsPath", "MSBUILD_EXE_PATH", "DOTNET_HOST_PATH" })
            psi.Environment.Remove(v);
        foreach (var (name, value) in environment)
            psi.Environment[name] = value;
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"dotnet {string.Join(' ', args)} failed ({process.ExitCode}):\n{await stdout}\n{await stderr}");
        return await stdout;
    }
}
