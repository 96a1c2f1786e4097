namespace InterpMesh.Cli.CommandLine;

/// <summary>A usage error: the message says what to change on the command line.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// <c>--name value</c> options and <c>--flag</c> switches after <c>interpmesh bench NAME</c>, for the
/// benchmarks only (every other command declares typed System.CommandLine options, see
/// <see cref="CommandTree"/>). Every option a benchmark reads is declared, so an unknown or misspelt
/// option is an error. It goes when the benchmarks move out of the CLI to bench/.
/// </summary>
public sealed class CliArgs
{
    private readonly Dictionary<string, string?> options = new(StringComparer.Ordinal);
    private readonly HashSet<string> read = new(StringComparer.Ordinal);

    public CliArgs(IReadOnlyList<string> args, ISet<string> flags)
    {
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
                throw new UsageException($"unexpected argument '{a}'; options look like --name value");
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0)
            {
                value = name[(eq + 1)..];
                name = name[..eq];
            }
            else if (!flags.Contains(name))
            {
                if (i + 1 >= args.Count)
                    throw new UsageException($"--{name} needs a value");
                value = args[++i];
            }
            if (!options.TryAdd(name, value))
                throw new UsageException($"--{name} is given twice");
        }
    }

    public bool Flag(string name)
    {
        read.Add(name);
        return options.ContainsKey(name);
    }

    public string? Text(string name)
    {
        read.Add(name);
        return options.TryGetValue(name, out var v) ? v : null;
    }

    public string RequireText(string name, string what) =>
        Text(name) ?? throw new UsageException($"--{name} is required ({what})");

    public int? Int(string name, int? min = null)
    {
        var s = Text(name);
        if (s is null)
            return null;
        if (!int.TryParse(s, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int v))
            throw new UsageException($"--{name} must be an integer, got '{s}'");
        if (min is not null && v < min)
            throw new UsageException($"--{name} must be at least {min}, got {v}");
        return v;
    }

    public double? Real(string name)
    {
        var s = Text(name);
        if (s is null)
            return null;
        if (!double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
            throw new UsageException($"--{name} must be a number, got '{s}'");
        return v;
    }

    /// <summary>A comma-separated list of integers such as <c>1,2,3</c>.</summary>
    public int[]? IntList(string name)
    {
        var s = Text(name);
        if (s is null)
            return null;
        var parts = s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var result = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out result[i]))
                throw new UsageException($"--{name} must be comma-separated integers like 1,2,3; '{parts[i]}' is not an integer");
        }
        return result;
    }

    /// <summary>Fails on any option the command did not read.</summary>
    public void RejectUnknown(string command)
    {
        var unknown = options.Keys.Where(k => !read.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new UsageException($"unknown option{(unknown.Count > 1 ? "s" : "")} for '{command}': {string.Join(", ", unknown.Select(u => "--" + u))}; see `interpmesh help`");
    }
}
