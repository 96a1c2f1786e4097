using System.Text.Json;
using InterpMesh.Cli.Local;
using InterpMesh.Runtime;

namespace InterpMesh.Cli.CommandLine;

/// <summary>Dispatches <c>interpmesh &lt;command&gt;</c> and turns every failure into one clear line.</summary>
public static class CliApp
{
    public const string Usage = """
        interpmesh — serve and inspect transformer internals

        Start here (from a checkout): the local mesh, all four analyses on the toy models, an HTML report:
          interpmesh demo      [--report interpmesh-report.html] [--quick] [--data DIR] [--threads N] [--json]

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
          interpmesh up        [--model PATH] [--grpc-port 50050] [--model-port 50051] [--plugins DIR] [--data DIR] [--key KEY] [--bind A]

        Analyses through a gateway (--server URL of the gateway; --key KEY or INTERPMESH_API_KEY when auth is on):
          interpmesh plugins   --server URL [--json]
          interpmesh run PLUGIN --server URL [--model M] [--params FILE.json | --params-json '{...}'] [--timeout S] [--report FILE.html] [--json]
          interpmesh jobs      list [--plugin P] | watch ID | cancel ID | result ID  --server URL [--report FILE.html] [--json]
          interpmesh artifacts list [--prefix P] | get NAME --out DIR | put NAME --from DIR [--metadata-json J] | rm NAME  --server URL [--json]

          interpmesh train-toy induction|retrieval|concepts|functions --out DIR [--seed S] [--steps N] [--batch B] [--lr LR] [--json]

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
        --dtype float32|bfloat16, --device cpu|cuda[:N] (CUDA build only). Output is human-readable unless --json is given.
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        bool json = args.Contains("--json");
        try
        {
            if (args.Length > 0 && args[0] == "bench")
                throw new UsageException(BenchMoved(args));
            // Help and shell completion come from System.CommandLine (CommandTree): `interpmesh`,
            // `interpmesh help`, `interpmesh COMMAND --help`, and the [suggest] directive.
            if (args.Length == 0 || args[0] is "help" or "--help" or "-h" or "-?" || args[0].StartsWith('[') || args.Any(a => a is "--help" or "-h" or "-?"))
            {
                string[] forParser = args.Length == 0 || args[0] == "help" ? ["--help"] : args;
                string helpFor = string.Join(' ', forParser.TakeWhile(a => !a.StartsWith('-') && !a.StartsWith('[')).Take(2));
                int code = CommandTree.Build(helpFor).Parse(forParser).Invoke(new System.CommandLine.InvocationConfiguration { Output = stdout, Error = stderr });
                return args.Length == 0 ? 2 : code;
            }
            string command = args[0];
            string[] rest = args[1..];
            if (command == "config")
            {
                Parse(rest).RejectUnknown("config");
                foreach (var (name, value, source) in CliSettings.Describe())
                    stdout.WriteLine($"  {name,-12} {value,-40} {source}");
                return 0;
            }
            if (command == "train-toy")
            {
                if (rest.Length == 0 || rest[0].StartsWith("--", StringComparison.Ordinal))
                    throw new UsageException($"train-toy needs a model name: {string.Join(", ", InterpMesh.ToyModels.ToyCatalog.Names)}");
                return Toys.TrainToyCommand.Run(rest[0], Parse(rest[1..]), stdout, stderr);
            }
            if (command == "serve")
                return Serve.ServeCommand.Run(Parse(rest), stdout);
            if (command == "up")
                return Serve.UpCommand.Run(Parse(rest), stdout);
            if (command == "demo")
                return Demo.DemoCommand.Run(Parse(rest), stdout, stderr);
            if (command == "plugins")
                return Remote.RemoteAnalyses.Plugins(Parse(rest), stdout);
            if (command == "run")
            {
                if (rest.Length == 0 || rest[0].StartsWith("--", StringComparison.Ordinal))
                    throw new UsageException("run needs a plugin id: `interpmesh run probing --server URL --params file.json` (`interpmesh plugins` lists them)");
                return Remote.RemoteAnalyses.Run(rest[0], Parse(rest[1..]), stdout, stderr);
            }
            if (command is "jobs" or "artifacts")
            {
                if (rest.Length == 0 || rest[0].StartsWith("--", StringComparison.Ordinal))
                    throw new UsageException(command == "jobs" ? "jobs needs list, watch ID, cancel ID or result ID" : "artifacts needs list, get NAME, put NAME or rm NAME");
                string? target = rest.Length > 1 && !rest[1].StartsWith("--", StringComparison.Ordinal) ? rest[1] : null;
                var options = Parse(rest[(target is null ? 1 : 2)..]);
                return command == "jobs" ? Remote.RemoteAnalyses.Jobs(rest[0], target, options, stdout, stderr) : Remote.RemoteAnalyses.Artifacts(rest[0], target, options, stdout);
            }
            var parsed = Parse(rest);
            return command switch
            {
                "info" => InfoCommand.Run(parsed, stdout),
                "tokenize" => TokenizeCommand.Run(parsed, stdout, stdin),
                "generate" => GenerateCommand.Run(parsed, stdout),
                "forward" => ForwardCommand.Run(parsed, stdout),
                _ => throw new UsageException($"unknown command '{command}'; commands: demo, config, info, tokenize, generate, forward, serve, up, plugins, run, jobs, artifacts, train-toy (see `interpmesh help`)"),
            };
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

    private static CliArgs Parse(string[] rest) => new(rest, new HashSet<string> { "json", "quick", "soak", "loss" });
}
