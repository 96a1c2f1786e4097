using System.CommandLine;
using System.CommandLine.Parsing;

namespace InterpMesh.Cli.CommandLine;

/// <summary>
/// One line that says what to change, from System.CommandLine's parse errors. The common mistakes
/// are recognised from the parse itself (not from the library's wording): an unknown option,
/// command or stray argument, an option given twice, a missing argument or required option, an
/// option without its value. Anything else is the first error the library (or an option's parser or
/// a command's validator) reported, on one line and prefixed with the option it concerns.
/// </summary>
internal static class UsageErrors
{
    public static string Describe(ParseResult result)
    {
        var commandResult = result.CommandResult;
        var command = commandResult.Command;
        string path = Path(commandResult);
        string help = path.Length == 0 ? "`interpmesh help`" : $"`interpmesh {path} --help`";

        bool group = command.Subcommands.Count > 0 && command.Action is null && path.Length > 0;
        if (result.UnmatchedTokens.Count > 0)
        {
            var options = result.UnmatchedTokens.Where(t => t.StartsWith('-')).Select(CliOptions.Quote).ToList();
            string? word = result.UnmatchedTokens.Where(t => !t.StartsWith('-')).Select(CliOptions.Quote).FirstOrDefault();
            if (command.Subcommands.Count > 0 && word is not null)
                return $"unknown {(path.Length == 0 ? "" : path + " ")}command '{word}'; commands: {Names(command)} (see {help})";
            if (group)
                return $"{path} needs a command: {Names(command)} (see {help})";
            if (options.Count > 0)
                return $"unknown option{(options.Count > 1 ? "s" : "")} for '{(path.Length == 0 ? "interpmesh" : path)}': {string.Join(", ", options)}; see {help}";
            return $"unexpected argument '{word}' for '{path}'; options look like --name value (see {help})";
        }
        foreach (var option in commandResult.Children.OfType<OptionResult>())
        {
            if (option.IdentifierTokenCount > 1)
                return Repeated(option);
        }
        foreach (var argument in command.Arguments)
        {
            if (result.GetResult(argument) is not { Tokens.Count: > 0 })
                return $"{path} needs {argument.Description}";
        }
        if (group)
            return $"{path} needs a command: {Names(command)} (see {help})";
        foreach (var option in command.Options)
        {
            if (option.Required && result.GetResult(option) is null or { Implicit: true })
                return $"{option.Name} is required ({option.Description})";
        }
        foreach (var option in commandResult.Children.OfType<OptionResult>())
        {
            if (option.Tokens.Count == 0 && option.Option.Arity.MinimumNumberOfValues > 0 && !option.Implicit)
                return $"{option.Option.Name} needs a value";
        }
        var error = result.Errors[0];
        string message = string.Join(' ', error.Message.Split(['\n', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        var about = error.SymbolResult switch
        {
            OptionResult o => o.Option,
            ArgumentResult { Parent: OptionResult o } => o.Option,
            _ => null,
        };
        return about is null || message.Contains(about.Name, StringComparison.Ordinal) ? message : $"{about.Name}: {message}";
    }

    /// <summary>A command's rule that each option is given at most once (System.CommandLine keeps the last of a repeated flag).</summary>
    public static void RefuseRepeatedOptions(Command command)
    {
        command.Validators.Add(r =>
        {
            foreach (var option in r.Children.OfType<OptionResult>())
            {
                if (option.IdentifierTokenCount > 1)
                    r.AddError(Repeated(option));
            }
        });
        foreach (var child in command.Subcommands)
            RefuseRepeatedOptions(child);
    }

    private static string Repeated(OptionResult option) => $"{option.Option.Name} is given twice; give it once";

    private static string Names(Command command) => string.Join(", ", command.Subcommands.Where(c => !c.Hidden).Select(c => c.Name));

    /// <summary>The command words after <c>interpmesh</c>, e.g. <c>jobs watch</c>.</summary>
    private static string Path(CommandResult result)
    {
        var names = new List<string>();
        for (SymbolResult? r = result; r is CommandResult c && c.Command is not RootCommand; r = r.Parent)
            names.Insert(0, c.Command.Name);
        return string.Join(' ', names);
    }
}
