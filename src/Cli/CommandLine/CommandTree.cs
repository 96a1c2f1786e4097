using System.CommandLine;

namespace InterpMesh.Cli.CommandLine;

/// <summary>
/// Every command and option of <c>interpmesh</c> declared for System.CommandLine, which writes the
/// help (<c>interpmesh --help</c>, <c>interpmesh COMMAND --help</c>) and answers shell completion
/// (the <c>[suggest]</c> directive that <c>dotnet-suggest</c> calls). Each command's help carries its
/// usage lines from <see cref="CliApp.Usage"/>. The commands themselves read their options with
/// <see cref="CliArgs"/>, which refuses unknown ones with the messages the tests pin.
/// </summary>
internal static class CommandTree
{
    private static readonly string[] Groups = ["jobs", "artifacts"];

    [ThreadStatic]
    private static string? target;

    private static readonly (string Name, string Description)[] Common =
    [
        ("--threads", "libtorch intra-op threads"),
        ("--dtype", "float32 or bfloat16"),
        ("--device", "cpu, cuda or cuda:N (CUDA build only)"),
    ];

    private static readonly (string Name, string Description)[] Remote =
    [
        ("--server", "a gateway or model service URL (or INTERPMESH_SERVER)"),
        ("--key", "API key (or INTERPMESH_API_KEY)"),
    ];

    private static readonly (string Name, string Description)[] ModelRemote = [.. Remote, ("--model-name", "the gateway's model (or INTERPMESH_MODEL)")];

    /// <summary>The command tree; <paramref name="helpFor"/> (e.g. <c>run</c>, <c>jobs watch</c>) is the command whose help carries its usage lines.</summary>
    public static RootCommand Build(string? helpFor = null)
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
        root.Subcommands.Add(Leaf("demo", "Runs the local mesh and every analysis on the toy models; writes an HTML report.",
            [("--report", "HTML report path"), ("--quick", "a smaller configuration"), ("--data", "data folder"), ("--threads", "libtorch threads"), ("--json", "JSON output")]));
        root.Subcommands.Add(Leaf("config", "Shows the effective settings and where each comes from.", []));
        root.Subcommands.Add(Leaf("info", "Model architecture, dimensions and hooks (local --model or remote --server).",
            [("--model", "a Hugging Face folder or a llama2.c .bin"), ("--tokenizer", "tokenizer file"), ("--json", "JSON output"), .. ModelRemote, .. Common]));
        root.Subcommands.Add(Leaf("tokenize", "Token ids of a text (or of JSON strings on stdin).",
            [("--model", "model path"), ("--tokenizer", "tokenizer file"), ("--text", "the text"), ("--json", "JSON output"), .. ModelRemote, .. Common]));
        root.Subcommands.Add(Leaf("generate", "Generates from a prompt (greedy or sampled).",
            [("--model", "model path"), ("--prompt", "prompt text"), ("--prompt-ids", "prompt ids, comma-separated"), ("--max-new-tokens", "tokens to generate"),
             ("--temperature", "sampling temperature (0: greedy)"), ("--top-k", "sample among the k likeliest"), ("--top-p", "nucleus sampling"), ("--seed", "sampling seed"),
             ("--stop-ids", "stop ids, or none"), ("--tokenizer", "tokenizer file"), ("--json", "JSON output"), .. ModelRemote, .. Common]));
        root.Subcommands.Add(Leaf("forward", "One forward: logits, top-k, loss and captured activations.",
            [("--model", "model path"), ("--ids", "token ids, comma-separated"), ("--logits", "all, last or none"), ("--top-k", "top tokens per position"), ("--loss", "mean next-token loss"),
             ("--capture", "hook globs, comma-separated"), ("--tokenizer", "tokenizer file"), ("--json", "JSON output"), .. ModelRemote, .. Common]));
        root.Subcommands.Add(Leaf("serve", "Serves one model over gRPC (a model service).",
            [("--model", "model path"), ("--tokenizer", "tokenizer file"), ("--grpc-port", "gRPC port"), ("--metrics-port", "Prometheus port"), ("--bind", "address to listen on"), .. Common]));
        root.Subcommands.Add(Leaf("up", "The local mesh: a model service and a gateway with the built-in plugins, until Ctrl-C.",
            [("--model", "model path"), ("--grpc-port", "gateway port"), ("--model-port", "model service port"), ("--plugins", "plugins folder"), ("--data", "data folder"),
             ("--key", "require this API key"), ("--bind", "address to listen on"), ("--threads", "libtorch threads")]));
        root.Subcommands.Add(Leaf("plugins", "The analyses a gateway hosts.", [.. Remote, ("--json", "JSON output")]));
        var run = Leaf("run", "Runs an analysis through a gateway and follows it to its result.",
            [.. Remote, ("--model", "the model to analyse"), ("--params", "parameters file (JSON)"), ("--params-json", "parameters as JSON text"), ("--timeout", "seconds"),
             ("--report", "HTML report path"), ("--json", "JSON output")]);
        run.Arguments.Add(new Argument<string>("PLUGIN") { Description = "the plugin id (`interpmesh plugins` lists them)" });
        root.Subcommands.Add(run);
        (string, string)[] jobOptions = [.. Remote, ("--json", "JSON output")];
        root.Subcommands.Add(Group("jobs", "Analysis jobs on a gateway.",
            Leaf("list", "Jobs this key may see.", [.. jobOptions, ("--plugin", "only this plugin's")], ""),
            WithArgument(Leaf("watch", "Follows a job to its end.", [.. jobOptions, ("--report", "HTML report path")], ""), "ID", "the job id"),
            WithArgument(Leaf("cancel", "Asks a job to stop.", jobOptions, ""), "ID", "the job id"),
            WithArgument(Leaf("result", "A job's record and result.", [.. jobOptions, ("--report", "HTML report path")], ""), "ID", "the job id")));
        root.Subcommands.Add(Group("artifacts", "Artifacts on a gateway.",
            Leaf("list", "Artifacts, optionally under a prefix.", [.. jobOptions, ("--prefix", "name prefix")], ""),
            WithArgument(Leaf("get", "Downloads an artifact's files.", [.. jobOptions, ("--out", "folder to write to")], ""), "NAME", "the artifact"),
            WithArgument(Leaf("put", "Uploads a folder's files as an artifact.", [.. jobOptions, ("--from", "folder to upload"), ("--metadata-json", "metadata (JSON object)")], ""), "NAME", "the artifact"),
            WithArgument(Leaf("rm", "Deletes an artifact (admin).", jobOptions, ""), "NAME", "the artifact")));
        root.Subcommands.Add(WithArgument(Leaf("train-toy", "Trains a toy model (induction, retrieval, concepts, functions).",
            [("--out", "output folder"), ("--seed", "seed"), ("--steps", "training steps"), ("--batch", "batch size"), ("--lr", "learning rate"), ("--json", "JSON output")]), "NAME", "the toy"));
        return root;
    }

    private static Command Group(string name, string description, params Command[] children)
    {
        var group = new Command(name, description + Synopsis(name));
        foreach (var child in children)
            group.Subcommands.Add(child);
        return group;
    }

    private static Command WithArgument(Command command, string name, string description)
    {
        command.Arguments.Add(new Argument<string>(name) { Description = description });
        return command;
    }

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
