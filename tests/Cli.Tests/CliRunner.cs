using System.Text.Json;
using InterpMesh.Cli.CommandLine;

namespace InterpMesh.Cli.Tests;

/// <summary>Runs the CLI in-process, as a script would run it, and parses its JSON output.</summary>
internal static class CliRunner
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public JsonElement Json => JsonDocument.Parse(Stdout).RootElement.Clone();

        public IReadOnlyList<JsonElement> JsonLines =>
            Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
    }

    public static Result RunWithInput(string stdin, params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = CliApp.Run(args, stdout, stderr, new StringReader(stdin));
        return new Result(code, stdout.ToString(), stderr.ToString());
    }

    public static Result Run(params string[] args) => RunWithInput("", args);

    /// <summary>
    /// Runs the built CLI as its own process, with only the given INTERPMESH_* settings in its
    /// environment: for what is per process (settings from the environment, the live-tensor count).
    /// </summary>
    public static Result RunProcess(IDictionary<string, string> env, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "interpmesh"), args) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var name in new[] { "INTERPMESH_SERVER", "INTERPMESH_API_KEY", "INTERPMESH_MODEL", "INTERPMESH_CONFIG" })
            psi.Environment.Remove(name);
        foreach (var (k, v) in env)
            psi.Environment[k] = v;
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(120_000), $"interpmesh {string.Join(' ', args)} did not exit");
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static int[] Ints(this JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}
