using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using InterpMesh.Runtime.Execution;
using static TorchSharp.torch;

namespace InterpMesh.Cli.CommandLine;

/// <summary>Where a command writes and reads: the process's console, or a test's writers.</summary>
internal sealed record CliConsole(TextWriter Out, TextWriter Error, TextReader In);

/// <summary>
/// Typed System.CommandLine options with the CLI's validation: each factory declares the parse
/// (integers, numbers, id lists, dtype names), the range it accepts and the message when a value is
/// wrong. Range checks sit in the parser because System.CommandLine runs an option's validators
/// even after its parse failed.
/// </summary>
internal static class CliOptions
{
    public static Option<string> Text(string name, string description, string helpName) => new(name) { Description = description, HelpName = helpName };

    public static Option<bool> Flag(string name, string description) => new(name) { Description = description, Arity = ArgumentArity.Zero };

    /// <summary>An integer of at least <paramref name="min"/> (when given); null when absent.</summary>
    public static Option<int?> Int(string name, string description, int? min = null, string helpName = "N") => new(name)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = r => ParseInt(r, name, min),
    };

    /// <summary>An integer of at least <paramref name="min"/> with a default the help shows.</summary>
    public static Option<int> Int(string name, string description, int defaultValue, int min, string helpName = "N") => new(name)
    {
        Description = description,
        HelpName = helpName,
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r => ParseInt(r, name, min) ?? defaultValue,
    };

    /// <summary>A finite number; null when absent.</summary>
    public static Option<double?> Real(string name, string description, string helpName = "X") => new(name)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = r =>
        {
            string s = r.Tokens[0].Value;
            if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v))
                return v;
            r.AddError($"{name} must be a number, got '{Quote(s)}'");
            return null;
        },
    };

    /// <summary>
    /// Comma-separated integers such as <c>1,2,3</c> in one token; null when absent. With
    /// <paramref name="none"/>, the word <c>none</c> is an empty list.
    /// </summary>
    public static Option<IdList?> IntList(string name, string description, bool none = false) => new(name)
    {
        Description = description,
        HelpName = none ? "1,2,3|none" : "1,2,3",
        CustomParser = r => none && r.Tokens[0].Value == "none" ? new IdList([]) : ParseIntList(r, name, none),
    };

    /// <summary>A fixed set of values: anything else is refused, and shell completion offers them.</summary>
    public static Option<string> Choice(string name, string description, params string[] values)
    {
        var option = new Option<string>(name) { Description = description, HelpName = string.Join('|', values) };
        option.AcceptOnlyFromAmong(values);
        return option;
    }

    /// <summary>A weight dtype by any name <see cref="DTypeNames"/> accepts; null when absent. Completion offers the canonical names.</summary>
    public static Option<ScalarType?> DType(string description)
    {
        var option = new Option<ScalarType?>("--dtype")
        {
            Description = description,
            HelpName = "float32|bfloat16|float16",
            CustomParser = r =>
            {
                string s = r.Tokens[0].Value;
                if (DTypeNames.TryParse(s, out var dtype))
                    return dtype;
                r.AddError($"--dtype must be {DTypeNames.Accepted}, got '{Quote(s)}'");
                return null;
            },
        };
        // The canonical names only (not the enum's member names System.CommandLine would offer).
        option.CompletionSources.Clear();
        option.CompletionSources.Add("float32", "bfloat16", "float16");
        return option;
    }

    /// <summary>A file that must exist (System.CommandLine refuses a path that does not; the message is prefixed with the option).</summary>
    public static Option<FileInfo> ExistingFile(string name, string description) =>
        new Option<FileInfo>(name) { Description = description, HelpName = "FILE" }.AcceptExistingOnly();

    /// <summary>A folder that must exist.</summary>
    public static Option<DirectoryInfo> ExistingFolder(string name, string description) =>
        new Option<DirectoryInfo>(name) { Description = description, HelpName = "DIR" }.AcceptExistingOnly();

    /// <summary>Whether the user gave <paramref name="option"/> (an option's default does not count).</summary>
    public static bool Given(this SymbolResult result, Option option) => result.GetResult(option) is { Implicit: false };

    /// <inheritdoc cref="Given(SymbolResult, Option)"/>
    public static bool Given(this ParseResult result, Option option) => result.GetResult(option) is { Implicit: false };

    /// <summary>
    /// Adds a rule across a command's options. System.CommandLine runs a command's validators also
    /// after an option's value failed to parse, and reading that value then throws
    /// <see cref="InvalidOperationException"/>: the rule is skipped, and the parse error (already
    /// recorded) is what the user sees.
    /// </summary>
    public static void AddRule(this Command command, Action<CommandResult> rule) =>
        command.Validators.Add(r =>
        {
            try
            {
                rule(r);
            }
            catch (InvalidOperationException)
            {
            }
        });

    /// <summary>A piece of user input short enough to quote in a message.</summary>
    public static string Quote(string text) => text.Length > 40 ? text[..40] + "…" : text;

    private static int? ParseInt(ArgumentResult r, string name, int? min)
    {
        string s = r.Tokens[0].Value;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
        {
            r.AddError($"{name} must be an integer, got '{Quote(s)}'");
            return null;
        }
        if (min is not null && v < min)
        {
            r.AddError($"{name} must be at least {min}, got {v}");
            return null;
        }
        return v;
    }

    private static IdList? ParseIntList(ArgumentResult r, string name, bool none)
    {
        var parts = r.Tokens[0].Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var result = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out result[i]))
            {
                r.AddError(none
                    ? $"{name} must be comma-separated integers or 'none'; '{Quote(parts[i])}' is not an integer"
                    : $"{name} must be comma-separated integers like 1,2,3; '{Quote(parts[i])}' is not an integer");
                return null;
            }
        }
        return new IdList(result);
    }
}

/// <summary>
/// The value of a comma-separated id option. Not a bare array: System.CommandLine reads an absent
/// array option as empty and lets an array option take several tokens.
/// </summary>
internal sealed record IdList(int[] Values);
