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

    public static int[] Ints(this JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}
