using System.Diagnostics;
using System.Reflection;
using System.Text.Json.Nodes;

namespace InterpMesh.Bench.Harness;

/// <summary>
/// This program run again as a child process (a benchmark's part that must not share the parent's
/// process: a fresh heap, or a client apart from the servers), its report read from the last line of
/// its standard output (<c>--json</c>).
/// </summary>
internal static class SelfProcess
{
    /// <summary>Runs <c>interpmesh-bench <paramref name="args"/> --json</c> and returns its report; throws with the child's stderr if it fails.</summary>
    public static JsonNode Run(string what, params string[] args)
    {
        var psi = new ProcessStartInfo(Program(out string? assembly)) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (assembly is not null)
            psi.ArgumentList.Add(assembly);
        foreach (var a in args.Append("--json"))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start the {what} child process");
        var stderr = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"the {what} child process failed (exit {p.ExitCode}): {stderr.Result.Trim()}");
        return JsonNode.Parse(output.Trim().Split('\n')[^1])!;
    }

    /// <summary>
    /// The executable to start: the interpmesh-bench apphost beside this assembly (also when the
    /// benchmark runs inside another host, such as a test), else this process's own program (with the
    /// entry assembly when that is <c>dotnet</c>).
    /// </summary>
    private static string Program(out string? assembly)
    {
        assembly = null;
        string apphost = Path.Combine(AppContext.BaseDirectory, OperatingSystem.IsWindows() ? "interpmesh-bench.exe" : "interpmesh-bench");
        if (File.Exists(apphost))
            return apphost;
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this program's path to start a child process");
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            assembly = Assembly.GetEntryAssembly()!.Location;
        return self;
    }
}
