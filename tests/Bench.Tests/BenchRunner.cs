using System.Text.Json;
using InterpMesh.Bench.Harness;

namespace InterpMesh.Bench.Tests;

/// <summary>Runs interpmesh-bench in-process (its entry point) or as its own process, and parses its JSON output.</summary>
internal static class BenchRunner
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public JsonElement Json => JsonDocument.Parse(Stdout).RootElement.Clone();
    }

    public static Result Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = BenchApp.Run(args, stdout, stderr);
        return new Result(code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs the built interpmesh-bench as its own process: for what is per process (the live-tensor count).</summary>
    public static Result RunProcess(params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "interpmesh-bench"), args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(120_000), $"interpmesh-bench {string.Join(' ', args)} did not exit");
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
