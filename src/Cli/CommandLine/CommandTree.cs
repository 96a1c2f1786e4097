using System.CommandLine;

namespace InterpMesh.Cli.CommandLine;

/// <summary>
/// Every command of <c>interpmesh</c>, assembled from the commands' own declarations (each command
/// class declares its typed options and reads their values from the <see cref="ParseResult"/>).
/// System.CommandLine parses and validates with it, writes the help (<c>interpmesh --help</c>,
/// <c>interpmesh COMMAND --help</c>) and answers shell completion (the <c>[suggest]</c> directive
/// that <c>dotnet-suggest</c> calls). Each command's help carries its usage lines from
/// <see cref="CliApp.Usage"/>. The <c>bench</c> group is declared here for help and completion only:
/// the benchmarks still read their options with <see cref="CliArgs"/> until they move to bench/.
/// </summary>
internal static class CommandTree
{
    private static readonly string[] Groups = ["jobs", "artifacts", "bench"];

    [ThreadStatic]
    private static string? target;

    /// <summary>The command tree writing to <paramref name="console"/>; <paramref name="helpFor"/> (e.g. <c>run</c>, <c>bench serving</c>) is the command whose help carries its usage lines.</summary>
    public static RootCommand Build(CliConsole console, string? helpFor = null)
    {
        target = helpFor;
        var root = new RootCommand("""
            interpmesh — serve and inspect transformer internals.
            Start here (from a checkout): `interpmesh demo` runs the local mesh, all four analyses on the toy models and writes an HTML report.
            Settings: --server, --key and --model default to INTERPMESH_SERVER, INTERPMESH_API_KEY and INTERPMESH_MODEL, then to
            $INTERPMESH_CONFIG or ~/.config/interpmesh/config.json (`interpmesh config` shows them).
            Exit codes: 0 success; 1 the command failed (reason on stderr); 2 the command line is wrong.
            Shell completion: `dotnet tool install -g dotnet-suggest`, then `dotnet-suggest register --command-path $(which interpmesh)`
            and source dotnet-suggest's shim for your shell (docs: README.md, "Command line").
            """);
        // The name help shows, also when the CLI runs inside a test host.
        root.HelpName = "interpmesh";
        Command[] commands =
        [
            Demo.DemoCommand.Create(console),
            Config(console),
            Local.InfoCommand.Create(console),
            Local.TokenizeCommand.Create(console),
            Local.GenerateCommand.Create(console),
            Local.ForwardCommand.Create(console),
            Serve.ServeCommand.Create(console),
            Serve.UpCommand.Create(console),
            Remote.RemoteAnalyses.Plugins(console),
            Remote.RemoteAnalyses.Run(console),
            Remote.RemoteAnalyses.Jobs(console),
            Remote.RemoteAnalyses.Artifacts(console),
            Toys.TrainToyCommand.Create(console),
        ];
        foreach (var command in commands)
        {
            command.Description += Synopsis(command.Name);
            UsageErrors.RefuseRepeatedOptions(command);
            root.Subcommands.Add(command);
        }
        root.Subcommands.Add(Bench());
        return root;
    }

    private static Command Config(CliConsole console)
    {
        var command = new Command("config", "Shows the effective settings and where each comes from.");
        command.SetAction(_ =>
        {
            foreach (var (name, value, source) in CliSettings.Describe())
                console.Out.WriteLine($"  {name,-12} {value,-40} {source}");
            return 0;
        });
        return command;
    }

    private static Command Bench()
    {
        (string, string)[] shared = [("--threads", "libtorch threads"), ("--json", "JSON output")];
        return Group("bench", "Benchmarks (docs/benchmarks.md records each result and its command).",
            Leaf("forward", "Forward throughput.", [("--preset", "model preset"), ("--batch", "rows"), ("--seq", "tokens per row"), ("--capture", "hook glob"), ("--logits", "none, last or all"),
                ("--warmup", "untimed iterations"), ("--iters", "timed iterations"), ("--model", "model path"), .. shared], "bench forward"),
            Leaf("stream", "Activation streaming beyond the forward.", [("--preset", "model preset"), ("--batch", "rows"), ("--seq", "tokens per row"), ("--clients", "concurrent clients"),
                ("--client-rows", "rows per client"), ("--client-seq", "tokens per client row"), ("--batch-window-ms", "batching window"), ("--iters", "iterations"), .. shared], "bench stream"),
            Leaf("gateway", "The gateway's cost against direct calls.", [("--preset", "model preset"), ("--batch", "rows"), ("--seq", "tokens per row"), ("--iters", "iterations"),
                ("--unary", "unary calls"), ("--capture", "hook glob"), .. shared], "bench gateway"),
            Leaf("probe", "Probe fitting.", [("--n", "examples"), ("--d", "dimensions"), ("--texts", "texts"), .. shared], "bench probe"),
            Leaf("retrieval", "Retrieval-head detection.", [("--trials", "trials"), .. shared], "bench retrieval"),
            Leaf("sae", "SAE training.", [("--d-in", "input width"), ("--d-sae", "SAE width"), ("--k", "top-k"), ("--batch", "batch"), ("--steps", "steps"), .. shared], "bench sae"),
            Leaf("load", "Mixed load on a local mesh.", [("--clients", "clients"), ("--seconds", "duration"), ("--mix", "run=6,generate=3,analysis=1"), ("--max-concurrent", "model service admission"),
                ("--admission-wait-ms", "admission wait"), ("--max-jobs", "running jobs"), ("--max-queued", "queued jobs"), ("--retained-jobs", "retained jobs"), ("--model", "model path"),
                ("--soak", "memory timeline"), ("--sample-seconds", "sampling period"), .. shared], "bench load"),
            Leaf("loading", "Checkpoint loading time and memory.", [("--dir", "checkpoint folder"), ("--source-dtype", "bf16 or f32"), ("--repeats", "repeats"), .. shared], "bench loading"),
            Leaf("serving", "The engine's serving figures.", [("--model", "model path"), ("--preset", "model preset"), ("--save-model", "keep the preset's weights"), ("--server", "a running service"),
                ("--iters", "Runs per measure"), ("--run-seq", "Run length"), ("--long-tokens", "long Generate tokens"), ("--gen-tokens", "Generate tokens"), ("--prompt-length", "prompt length"),
                ("--clients", "concurrent clients"), ("--rounds", "rounds"), ("--stall-capture", "hook glob"), ("--batch-window-ms", "batching window"), ("--only", "measures"), .. shared], "bench serving"));
    }

    private static Command Group(string name, string description, params Command[] children)
    {
        var group = new Command(name, description + Synopsis(name));
        foreach (var child in children)
            group.Subcommands.Add(child);
        return group;
    }

    /// <summary>A benchmark's command for help and completion (its options are parsed by <see cref="CliArgs"/>).</summary>
    private static Command Leaf(string name, string description, IEnumerable<(string Name, string Description)> options, string? path = null)
    {
        var command = new Command(name, description + Synopsis(path ?? name)) { TreatUnmatchedTokensAsErrors = false };
        foreach (var (option, text) in options.DistinctBy(o => o.Name))
        {
            bool flag = option is "--json" or "--quick" or "--soak" or "--loss";
            command.Options.Add(flag ? new Option<bool>(option) { Description = text } : new Option<string>(option) { Description = text });
        }
        return command;
    }

    /// <summary>The command's usage lines from <see cref="CliApp.Usage"/>, under its description.</summary>
    private static string Synopsis(string name)
    {
        // Only the command asked about: a listing of commands shows their one-line descriptions.
        bool asked = target is not null && (target == name || (target.StartsWith(name + " ", StringComparison.Ordinal) && !name.Contains(' ') && !Groups.Contains(name)));
        if (name.Length == 0 || !asked)
            return "";
        string usage = CliApp.CommandUsage(name);
        return usage == CliApp.Usage || !usage.StartsWith("usage:", StringComparison.Ordinal)
            ? ""
            : "\n\n" + usage["usage:\n".Length..].Split("\n\n")[0];
    }
}
