namespace InterpMesh.Bench.Tests;

/// <summary>
/// The harness's command line: the shared options are parsed and validated in one place (System.CommandLine),
/// every bad value or unknown word is a usage error (exit 2) that says what to fix, and help lists the shared
/// options beside each benchmark's own. Nothing here runs a benchmark.
/// </summary>
public sealed class CommandLineTests
{
    private static readonly string[] Benchmarks = ["forward", "patching", "stream", "gateway", "probe", "retrieval", "sae", "circuits", "load", "loading", "serving", "jobs", "python-client"];

    [Theory]
    [InlineData("--batch must be an integer, got 'x'", "forward", "--batch", "x")]
    [InlineData("--batch must be at least 1, got 0", "gateway", "--batch", "0")]
    [InlineData("--seq must be an integer, got '12.5'", "stream", "--seq", "12.5")]
    [InlineData("--iters must be at least 1, got 0", "serving", "--iters", "0")]
    [InlineData("--warmup must be an integer, got 'two'", "forward", "--warmup", "two")]
    [InlineData("--threads must be at least 1, got 0", "probe", "--threads", "0")]
    [InlineData("--clients must be an integer, got 'many'", "load", "--clients", "many")]
    [InlineData("--batch-window-ms must be an integer, got 'soon'", "stream", "--batch-window-ms", "soon")]
    [InlineData("unknown preset 'gpt5'; known presets: gpt2-small, gpt2-tiny, llama-tiny", "forward", "--preset", "gpt5")]
    [InlineData("--logits must be none, last or all, got 'some'", "forward", "--logits", "some")]
    [InlineData("--dtype must be float32, bfloat16 or float16, got 'int8'", "forward", "--dtype", "int8")]
    [InlineData("--source-dtype must be bf16 or f32, got 'f64'", "loading", "--source-dtype", "f64")]
    [InlineData("--only takes a comma-separated list of idle, during-generate, during-stall, generate, engine; got 'nothing'", "serving", "--only", "idle,nothing")]
    [InlineData("--mix takes kind=weight pairs over run, generate, analysis (e.g. run=6,generate=3,analysis=1), got 'train=2'", "load", "--mix", "run=1,train=2")]
    [InlineData("--mix needs at least one positive weight", "load", "--mix", "run=0")]
    [InlineData("--unary must be at least 10, got 3", "gateway", "--unary", "3")]
    [InlineData("--client must be in-process or process, got 'thread'", "gateway", "--client", "thread")]
    [InlineData("--warmup must be at least 0, got -1", "gateway", "--warmup", "-1")]
    [InlineData("--worker-poll-ms must be at least 10, got 5", "jobs", "--worker-poll-ms", "5")]
    [InlineData("--slots must be an integer, got 'four'", "jobs", "--slots", "four")]
    [InlineData("give --model PATH or --preset NAME, not both", "serving", "--preset", "gpt2-tiny", "--model", "m.bin")]
    [InlineData("--save-model DIR keeps the random checkpoint of a --preset", "serving", "--save-model", "/tmp/x")]
    [InlineData("--server measures a running service; it takes no --model, --preset or --batch-window-ms", "serving", "--server", "http://127.0.0.1:1", "--preset", "gpt2-tiny")]
    [InlineData("--seq 4000 exceeds the gpt2-tiny context length of 128", "forward", "--preset", "gpt2-tiny", "--seq", "4000")]
    [InlineData("--seq 4000 exceeds the gpt2-tiny context length of 128", "patching", "--preset", "gpt2-tiny", "--seq", "4000")]
    [InlineData("--batch must be at least 1, got 0", "patching", "--batch", "0")]
    public void A_bad_value_is_a_usage_error_that_says_what_to_fix(string message, params string[] args)
    {
        var r = BenchRunner.Run([.. args, "--json"]);
        Assert.Equal(2, r.ExitCode);
        Assert.StartsWith("error: ", r.Stderr, StringComparison.Ordinal);
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
        Assert.Contains(message, r.Json.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public void A_long_bad_value_is_quoted_only_in_part()
    {
        string value = new('x', 500);
        var r = BenchRunner.Run("forward", "--batch", value);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains($"--batch must be an integer, got '{new string('x', 40)}…'", r.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain(new string('x', 41), r.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("unknown option '--bogus' for 'forward'; `interpmesh-bench forward --help` lists the options", "forward", "--bogus", "1")]
    [InlineData("unknown option '--stall-capture' for 'forward'", "forward", "--stall-capture", "*")]
    [InlineData("unexpected argument 'extra' for 'serving'", "serving", "extra")]
    [InlineData("unknown benchmark 'nothing'; benchmarks: forward, patching, stream, gateway, probe, retrieval, sae, circuits, load, loading, serving", "nothing")]
    public void An_unknown_option_argument_or_benchmark_is_refused(string message, params string[] args)
    {
        var r = BenchRunner.Run(args);
        Assert.Equal(2, r.ExitCode);
        Assert.StartsWith($"error: {message}", r.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Each_benchmarks_help_lists_the_shared_options_and_its_own()
    {
        foreach (var name in Benchmarks)
        {
            var r = BenchRunner.Run(name, "--help");
            Assert.True(r.ExitCode == 0, $"{name} --help: {r.Stderr}");
            Assert.Contains($"interpmesh-bench {name} [options]", r.Stdout, StringComparison.Ordinal);
            Assert.Contains("--threads <N>", r.Stdout, StringComparison.Ordinal);
            Assert.Contains("--json", r.Stdout, StringComparison.Ordinal);
            // The loading benchmark's child-process options are not for users.
            Assert.DoesNotContain("--child", r.Stdout, StringComparison.Ordinal);
        }
        var forward = BenchRunner.Run("forward", "--help").Stdout;
        foreach (var option in new[] { "--preset <NAME>", "--batch <B>", "--seq <T>", "--warmup <W>", "--iters <I>", "--capture <GLOB[,GLOB]>", "--logits <WORD>", "--dtype <DTYPE>" })
            Assert.Contains(option, forward, StringComparison.Ordinal);
        Assert.Contains("[default: gpt2-small]", forward, StringComparison.Ordinal);
        var serving = BenchRunner.Run("serving", "--help").Stdout;
        foreach (var option in new[] { "--model <PATH>", "--preset <NAME>", "--iters <I>", "--clients <N>", "--stall-capture <GLOB>", "--only <MEASURES>", "--batch-window-ms <W>" })
            Assert.Contains(option, serving, StringComparison.Ordinal);
        Assert.DoesNotContain("--warmup", serving, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("interpmesh-bench se", "serving")]
    [InlineData("interpmesh-bench forward --pre", "--preset")]
    [InlineData("interpmesh-bench load --so", "--soak")]
    public void Shell_completion_suggests_benchmarks_and_their_options(string line, string expected)
    {
        var r = BenchRunner.Run($"[suggest:{line.Length}]", line);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains(expected, r.Stdout.Split('\n', StringSplitOptions.TrimEntries));
    }

    [Fact]
    public void Root_help_lists_every_benchmark_and_a_bare_call_exits_two()
    {
        var help = BenchRunner.Run("--help");
        Assert.Equal(0, help.ExitCode);
        foreach (var name in Benchmarks)
            Assert.Matches($@"(?m)^\s+{name}\s", help.Stdout);
        var bare = BenchRunner.Run();
        Assert.Equal(2, bare.ExitCode);
        Assert.Contains("dotnet run -c Release --project bench/InterpMesh.Bench -- BENCHMARK [options]", bare.Stdout, StringComparison.Ordinal);
    }
}
