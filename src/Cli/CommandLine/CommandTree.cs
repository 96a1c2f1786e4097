using System.CommandLine;

namespace InterpMesh.Cli.CommandLine;

/// <summary>
/// Every command of <c>interpmesh</c>, assembled from the commands' own declarations (each command
/// class declares its typed options and reads their values from the <see cref="ParseResult"/>).
/// System.CommandLine parses and validates with it, writes the help (<c>interpmesh --help</c>,
/// <c>interpmesh COMMAND --help</c>) and answers shell completion (the <c>[suggest]</c> directive
/// that <c>dotnet-suggest</c> calls). Each command's help carries its usage lines from
/// <see cref="CliApp.Usage"/>.
/// </summary>
internal static class CommandTree
{
    private static readonly string[] Groups = ["jobs", "artifacts"];

    [ThreadStatic]
    private static string? target;

    /// <summary>The command tree writing to <paramref name="console"/>; <paramref name="helpFor"/> (e.g. <c>run</c>, <c>jobs watch</c>) is the command whose help carries its usage lines.</summary>
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

    /// <summary>The command's usage lines from <see cref="CliApp.Usage"/>, under its description.</summary>
    private static string Synopsis(string name)
    {
        // Only the command asked about: a listing of commands shows their one-line descriptions.
        bool asked = target is not null && (target == name || (target.StartsWith(name + " ", StringComparison.Ordinal) && !Groups.Contains(name)));
        if (name.Length == 0 || !asked)
            return "";
        string usage = CliApp.CommandUsage(name);
        return usage == CliApp.Usage || !usage.StartsWith("usage:", StringComparison.Ordinal)
            ? ""
            : "\n\n" + usage["usage:\n".Length..].Split("\n\n")[0];
    }
}
