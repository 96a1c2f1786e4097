using System.CommandLine;
using System.CommandLine.Invocation;
using System.Text.Json;
using InterpMesh.Runtime;

namespace InterpMesh.Cli.CommandLine;

/// <summary>Dispatches <c>interpmesh &lt;command&gt;</c> and turns every failure into one clear line.</summary>
public static class CliApp
{
    public const string Usage = """
        interpmesh — serve and inspect transformer internals

        Start here (from a checkout): the local mesh, all four analyses on the toy models, an HTML report:
          interpmesh demo      [--report interpmesh-report.html] [--quick] [--data DIR] [--models DIR] [--plugins DIR] [--threads N] [--json]

        Local mode (the model is loaded in this process):
          interpmesh info      --model PATH [--tokenizer PATH] [--json]
          interpmesh tokenize  (--model PATH | --tokenizer PATH) [--text "..."] [--json]
                               without --text: one JSON string per line on stdin, one {"ids": [...]} per line out
          interpmesh generate  --model PATH (--prompt "..." | --prompt-ids 1,2,3) --max-new-tokens N
                               [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop-ids 1,2 | --stop-ids none] [--json]
          interpmesh forward   --model PATH --ids 1,2,3 [--logits all|last|none] [--top-k K] [--loss]
                               [--capture GLOB[,GLOB]] [--json]   (--capture prints shape and stats per hook; with --json, the values)
          interpmesh serve     --model PATH [--tokenizer PATH] [--grpc-port P] [--metrics-port Q] [--bind ADDRESS] [--threads N]

        Remote mode: info, tokenize, generate and forward take --server URL (e.g. http://127.0.0.1:50051)
        instead of --model and print the same JSON. Through a gateway add --key KEY (or INTERPMESH_API_KEY)
        and, when it serves several models, --model-name NAME.

        The local mesh (a model service + a gateway with the built-in plugins, on loopback, until Ctrl-C):
          interpmesh up        [--model PATH] [--grpc-port 50050] [--model-port 50051] [--plugins DIR] [--data DIR] [--key KEY] [--bind A] [--threads N] [--model-settings NAME=VALUE,…]

        Analyses through a gateway (--server URL of the gateway; --key KEY or INTERPMESH_API_KEY when auth is on):
          interpmesh plugins   --server URL [--json]
          interpmesh run PLUGIN --server URL [--model M] [--params FILE.json | --params-json '{...}'] [--timeout S] [--report FILE.html] [--json]
          interpmesh jobs      list [--plugin P] | watch ID | cancel ID | result ID  --server URL [--report FILE.html] [--json]
          interpmesh artifacts list [--prefix P] | get NAME --out DIR | put NAME --from DIR [--metadata-json J] | rm NAME  --server URL [--json]

          interpmesh train-toy induction|retrieval|concepts|functions --out DIR [--seed S] [--steps N] [--batch B] [--lr LR] [--threads N] [--json]

        Benchmarks are their own program (docs/benchmarks.md): from a checkout,
          dotnet run -c Release --project bench/InterpMesh.Bench -- --help

        Settings: --server, --key and --model (--model-name for model commands) default to the environment
        variables INTERPMESH_SERVER, INTERPMESH_API_KEY and INTERPMESH_MODEL, then to the config file
        $INTERPMESH_CONFIG or ~/.config/interpmesh/config.json ({"server": "...", "apiKey": "...", "model": "..."}).
          interpmesh config    shows the effective settings and where each comes from

        Exit codes: 0 success; 1 the command failed (reason on stderr); 2 the command line is wrong.
        `interpmesh COMMAND --help` shows one command's usage.

        PATH is a Hugging Face folder (config.json + model.safetensors) or a llama2.c .bin (tokenizer:
        --tokenizer, or tokenizer.bin / a single tok*.bin beside it). Common options: --threads N,
        --dtype float32|bfloat16|float16, --device cpu|cuda[:N] (CUDA build only). Output is human-readable unless --json is given.
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        bool json = args.Contains("--json");
        try
        {
            if (args.Length > 0 && args[0] == "bench")
                throw new UsageException(BenchMoved(args));
            // Every command is parsed, validated, helped and completed by System.CommandLine
            // (CommandTree): `interpmesh`, `interpmesh help`, `interpmesh COMMAND --help`, [suggest].
            string[] forParser = args.Length == 0 || args[0] == "help" ? ["--help"] : args;
            string helpFor = string.Join(' ', forParser.TakeWhile(a => !a.StartsWith('-') && !a.StartsWith('[')).Take(2));
            // No response files: a value such as --text "@user hi" is text, not a file to read arguments from.
            var parsed = CommandTree.Build(new CliConsole(stdout, stderr, stdin), helpFor).Parse(forParser, new ParserConfiguration { ResponseFileTokenReplacer = null });
            if (parsed.Action is ParseErrorAction)
                throw new UsageException(UsageErrors.Describe(parsed));
            // Exceptions reach the handler below; Ctrl-C is left to the commands (`serve` and `up` stop their hosts on it).
            int code = parsed.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null });
            return args.Length == 0 ? 2 : code;
        }
        catch (Exception e) when (e is UsageException or ModelFormatException or ArgumentException or InvalidOperationException or FileNotFoundException or DirectoryNotFoundException)
        {
            stderr.WriteLine($"error: {e.Message}");
            if (json)
                stdout.WriteLine(JsonSerializer.Serialize(new Dictionary<string, string> { ["error"] = e.Message }));
            return e is UsageException ? 2 : 1;
        }
    }

    /// <summary>The usage lines of one command (its line and the continuation lines under it), or all of them.</summary>
    public static string CommandUsage(string command)
    {
        var lines = Usage.Split('\n');
        var picked = new List<string>();
        for (int i = 0; i < lines.Length; i++)
        {
            string trimmed = lines[i].TrimStart();
            if (!trimmed.StartsWith($"interpmesh {command} ", StringComparison.Ordinal) && trimmed != $"interpmesh {command}")
                continue;
            int indent = lines[i].Length - trimmed.Length;
            picked.Add(lines[i].TrimEnd());
            while (i + 1 < lines.Length && lines[i + 1].Length - lines[i + 1].TrimStart().Length > indent && !lines[i + 1].TrimStart().StartsWith("interpmesh ", StringComparison.Ordinal))
                picked.Add(lines[++i].TrimEnd());
        }
        return picked.Count == 0 ? Usage : "usage:\n" + string.Join('\n', picked) + "\n\n(`interpmesh help` lists every command, settings and exit codes)";
    }

    /// <summary>Where `interpmesh bench ...` went: the benchmarks are the interpmesh-bench program now.</summary>
    private static string BenchMoved(string[] args)
    {
        string benchmark = args.Length > 1 && !args[1].StartsWith('-') ? (args[1].Length > 20 ? args[1][..20] + "…" : args[1]) : "BENCHMARK";
        return $"benchmarks moved to their own program: from a checkout, `dotnet run -c Release --project bench/InterpMesh.Bench -- {benchmark} ...` "
            + "(built: bench/InterpMesh.Bench/bin/Release/net10.0/linux-x64/interpmesh-bench); docs/benchmarks.md";
    }
}
