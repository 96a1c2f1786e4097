namespace InterpMesh.Cli.Tests;

/// <summary>Help and shell completion come from System.CommandLine's model of every command.</summary>
public sealed class CommandLineHelpTests
{
    [Fact]
    public void Every_command_has_generated_help_with_its_options_and_usage_lines()
    {
        foreach (var command in new[] { "demo", "config", "info", "tokenize", "generate", "forward", "serve", "up", "plugins", "run", "jobs", "artifacts", "train-toy", "jobs watch" })
        {
            var r = CliRunner.Run([.. command.Split(' '), "--help"]);
            Assert.True(r.ExitCode == 0, $"{command} --help: {r.Stderr}");
            Assert.Contains($"interpmesh {command}", r.Stdout, StringComparison.Ordinal);
            Assert.Contains("Usage:", r.Stdout, StringComparison.Ordinal);   // System.CommandLine's layout
            Assert.Contains("--help", r.Stdout, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Root_help_lists_every_command_and_a_bare_call_exits_two()
    {
        var root = CliRunner.Run("--help");
        Assert.Equal(0, root.ExitCode);
        foreach (var command in new[] { "demo", "info", "generate", "forward", "serve", "up", "plugins", "run", "jobs", "artifacts", "train-toy" })
            Assert.Matches($@"(?m)^\s+{command}\b", root.Stdout);
        Assert.Equal(2, CliRunner.Run().ExitCode);
    }

    [Theory]
    [InlineData("bench", "serving", "--iters", "5")]
    [InlineData("bench", "serving", "--help")]
    [InlineData("bench")]
    public void Bench_is_a_usage_error_that_points_at_the_benchmark_program(params string[] args)
    {
        var r = CliRunner.Run(args);
        Assert.Equal(2, r.ExitCode);
        Assert.StartsWith("error: benchmarks moved to their own program", r.Stderr, StringComparison.Ordinal);
        Assert.Contains($"dotnet run -c Release --project bench/InterpMesh.Bench -- {(args.Length > 1 ? args[1] : "BENCHMARK")} ...", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain(" bench", CliRunner.Run("--help").Stdout.Split("Commands:")[1], StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("interpmesh ge", "generate")]
    [InlineData("interpmesh forward --lo", "--logits")]
    [InlineData("interpmesh jobs w", "watch")]
    public void Shell_completion_suggests_commands_and_options(string line, string expected)
    {
        var r = CliRunner.Run($"[suggest:{line.Length}]", line);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains(expected, r.Stdout.Split('\n', StringSplitOptions.TrimEntries));
    }
}
