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
        version = $"1.0.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
        // --no-build: the test project's own build made these Release outputs, and this process has them
        // loaded. Building them again under another version rewrites the DLL in place (the build hard-links
        // obj, bin and this test's copy), and the running tests then read a changed image (BadImageFormatException).
        // --no-restore: a restore under the test version would mark them out of date for the next build.
        foreach (var project in new[] { "src/Contracts", "src/Plugins/Abstractions" })
            await Dotnet("pack", Path.Combine(RepoPaths.Root, project), "-c", "Release", "--no-build", "--no-restore", "-o", feed, $"-p:Version={version}", "-p:IsPackable=true", "--nologo");
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
        // The testing package and what it brings: the runtime, the engine and the wire mapping. Packed
        // without building, like the SDK above: this process has the runtime, engine and wire DLLs loaded.
        // The testing project is not part of this test project's build, so it is built first, as the
        // repository builds it (its references are up to date: nothing loaded here is written).
        await Dotnet("build", Path.Combine(RepoPaths.Root, "src/Plugins/Testing"), "-c", "Release", "--nologo");
        foreach (var project in new[] { "src/ModelService/Runtime", "src/ModelService/Engine", "src/ModelService/Wire", "src/Plugins/Testing" })
            await Dotnet("pack", Path.Combine(RepoPaths.Root, project), "-c", "Release", "--no-build", "--no-restore", "-o", feed, $"-p:Version={version}", "-p:IsPackable=true", "--nologo");
        return await Dotnet(new Dictionary<string, string> { ["TOKENSTATS_MODEL"] = RepoPaths.Models("stories260K/stories260K.bin") },
            "test", Path.Combine(RepoPaths.Root, "samples/TokenStatsPlugin.Tests"), "-o", Path.Combine(Path.GetDirectoryName(feed)!, "token-stats-tests"),
            $"-p:InterpMeshSdkVersion={version}", $"-p:RestoreAdditionalProjectSources={feed}", "--nologo");
    }

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
