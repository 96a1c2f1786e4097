using System.CommandLine;
using System.CommandLine.Invocation;
using InterpMesh.Bench.Benchmarks;
using InterpMesh.Runtime;

namespace InterpMesh.Bench.Harness;

/// <summary>
/// <c>interpmesh-bench BENCHMARK [options]</c>: declares every benchmark for System.CommandLine
/// (help, completion, parsing and validation of their options), runs the one asked for in a
/// <see cref="BenchContext"/> and prints its report. Exit codes as the CLI's: 0 success; 1 the
/// benchmark failed (reason on stderr); 2 the command line is wrong.
/// </summary>
public static class BenchApp
{
    /// <summary>Every benchmark, in the order help lists them.</summary>
    private static Benchmark[] All() =>
    [
        new ForwardBenchmark(), new PatchingBenchmark(), new StreamBenchmark(), new GatewayBenchmark(), new ProbeBenchmark(), new RetrievalBenchmark(),
        new SaeBenchmark(), new CircuitsBenchmark(), new LoadBenchmark(), new LoadingBenchmark(), new ServingBenchmark(), new JobsBenchmark(), new PythonClientBenchmark(),
    ];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(stdout);
        ArgumentNullException.ThrowIfNull(stderr);
        // Until the command line is parsed, an error is also written as JSON when --json is among the words.
        bool json = args.Contains("--json");
        try
        {
            var benchmarks = All();
            var threads = SharedOptions.Threads();
            var jsonOption = SharedOptions.Json();
            var root = Build(benchmarks, threads, jsonOption);
            var parse = root.Parse(args);
            // Help (`--help` anywhere) and directives such as completion ([suggest]) are System.CommandLine's
            // actions; the benchmarks have none of their own.
            if (parse.Action is not null and not ParseErrorAction)
                return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
            var command = parse.CommandResult.Command;
            if (parse.UnmatchedTokens.Count > 0)
                throw new BenchUsageException(Unmatched(command, root, parse.UnmatchedTokens, benchmarks));
            if (command == root)
            {
                // No benchmark named: the list of them, as a usage error.
                root.Parse(["--help"]).Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
                return 2;
            }
            if (parse.Errors.Count > 0)
                throw new BenchUsageException($"{string.Join("; ", parse.Errors.Select(e => e.Message).Distinct())}; `interpmesh-bench {command.Name} --help` lists the options");
            var benchmark = benchmarks.Single(b => b.Name == command.Name);
            json = parse.GetValue(jsonOption);
            BenchReport report;
            using (var context = new BenchContext(parse, stdout, json, parse.GetValue(threads)))
                report = benchmark.Run(context);
            ReportPrinter.Print(report, json, stdout);
            return 0;
        }
        catch (Exception e) when (e is BenchUsageException or ModelFormatException or ArgumentException or InvalidOperationException or FileNotFoundException or DirectoryNotFoundException)
        {
            stderr.WriteLine($"error: {e.Message}");
            if (json)
                ReportPrinter.WriteJson(stdout, new Dictionary<string, string> { ["error"] = e.Message });
            return e is BenchUsageException ? 2 : 1;
        }
    }

    private static RootCommand Build(Benchmark[] benchmarks, Option<int?> threads, Option<bool> json)
    {
        var root = new RootCommand("""
            interpmesh-bench — InterpMesh's benchmarks; docs/benchmarks.md records each result and its command.
            Run from a checkout: dotnet run -c Release --project bench/InterpMesh.Bench -- BENCHMARK [options]
            (or the built bench/InterpMesh.Bench/bin/Release/net10.0/linux-x64/interpmesh-bench).
            Every benchmark takes --threads N and --json. Exit codes: 0 success; 1 the benchmark failed; 2 the command line is wrong.
            """);
        // The name help shows, also when this runs inside a test host.
        root.HelpName = "interpmesh-bench";
        foreach (var benchmark in benchmarks)
        {
            var command = new Command(benchmark.Name, benchmark.Description);
            foreach (var option in benchmark.Options)
                command.Options.Add(option);
            command.Options.Add(threads);
            command.Options.Add(json);
            root.Subcommands.Add(command);
        }
        return root;
    }

    /// <summary>The message for words the parser did not match: an unknown benchmark, option or argument.</summary>
    private static string Unmatched(Command command, RootCommand root, IReadOnlyList<string> tokens, Benchmark[] benchmarks)
    {
        string first = SharedOptions.Clip(tokens.FirstOrDefault(t => t.StartsWith('-')) ?? tokens[0]);
        if (command == root && !first.StartsWith('-'))
            return $"unknown benchmark '{first}'; benchmarks: {string.Join(", ", benchmarks.Select(b => b.Name))}";
        string where = command == root ? "" : $" for '{command.Name}'";
        string help = command == root ? "`interpmesh-bench --help`" : $"`interpmesh-bench {command.Name} --help`";
        return first.StartsWith('-')
            ? $"unknown option '{first}'{where}; {help} lists the options"
            : $"unexpected argument '{first}'{where}; options look like --name value, {help} lists them";
    }
}
