using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;

namespace InterpMesh.Bench.Harness;

/// <summary>
/// The options several benchmarks take, each declared once here: its name, help text, parsing and
/// validation (a bad value is a usage error naming the option and what it accepts). A benchmark
/// picks the ones it takes with its own default. <see cref="Threads"/> and <see cref="Json"/> are
/// added to every benchmark by <see cref="BenchApp"/>.
/// </summary>
internal static class SharedOptions
{
    /// <summary><c>--threads N</c>: libtorch intra-op threads (default: libtorch's choice).</summary>
    public static Option<int?> Threads() => OptionalInt("--threads", 1, "libtorch intra-op threads (default: libtorch's choice)");

    /// <summary><c>--json</c>: one JSON document on stdout instead of text.</summary>
    public static Option<bool> Json() => new("--json") { Description = "print one JSON document (field names as in docs/benchmarks.md) instead of text" };

    /// <summary><c>--preset NAME</c>: a model shape from <see cref="Presets"/>, with random weights; null default means "not given".</summary>
    public static Option<string?> Preset(string? @default)
    {
        var option = new Option<string?>("--preset")
        {
            Description = $"model shape with random weights: {string.Join(", ", Presets.Names)}",
            HelpName = "NAME",
        };
        if (@default is not null)
            option.DefaultValueFactory = _ => @default;
        option.Validators.Add(r =>
        {
            string? name = r.GetValueOrDefault<string?>();
            if (name is not null && !Presets.Names.Contains(name))
                r.AddError($"unknown preset '{Clip(name)}'; known presets: {string.Join(", ", Presets.Names)}");
        });
        return option;
    }

    /// <summary><c>--model PATH</c>: a Hugging Face folder or a llama2.c .bin.</summary>
    public static Option<string?> Model(string description) => new("--model") { Description = description, HelpName = "PATH" };

    /// <summary><c>--batch B</c>.</summary>
    public static Option<int> Batch(int @default, string description = "rows per request") => Int("--batch", @default, 1, description, "B");

    /// <summary><c>--seq T</c>.</summary>
    public static Option<int> Seq(int @default, string description = "tokens per row") => Int("--seq", @default, 1, description, "T");

    /// <summary><c>--iters I</c>.</summary>
    public static Option<int> Iters(int @default, string description = "timed iterations (the median is reported)") => Int("--iters", @default, 1, description, "I");

    /// <summary><c>--warmup W</c>.</summary>
    public static Option<int> Warmup(int @default) => Int("--warmup", @default, 0, "untimed iterations first", "W");

    /// <summary><c>--clients N</c>.</summary>
    public static Option<int> Clients(int @default, string description = "concurrent clients") => Int("--clients", @default, 1, description, "N");

    /// <summary><c>--batch-window-ms W</c>: the model service's batching window (default: the service's own when null).</summary>
    public static Option<int?> BatchWindowMs() => OptionalInt("--batch-window-ms", 0, "the model service's batching window in ms", "W");

    /// <summary><c>--capture GLOB[,GLOB]</c>: hook globs, comma-separated (<see cref="Globs"/> splits them).</summary>
    public static Option<string> Capture(string @default) => new("--capture")
    {
        Description = "hook globs to capture, comma-separated",
        HelpName = "GLOB[,GLOB]",
        DefaultValueFactory = _ => @default,
    };

    /// <summary>Optional <c>--capture</c>: nothing captured unless given.</summary>
    public static Option<string?> OptionalCapture() => new("--capture") { Description = "hook globs to capture, comma-separated (default: none)", HelpName = "GLOB[,GLOB]" };

    /// <summary><c>--dtype NAME</c>: the model's weight dtype.</summary>
    public static Option<string> DType(string @default = "float32")
    {
        var option = new Option<string>("--dtype") { Description = $"weight dtype: {DTypeNames.Accepted}", HelpName = "DTYPE", DefaultValueFactory = _ => @default };
        option.Validators.Add(r =>
        {
            string? name = r.GetValueOrDefault<string>();
            if (!DTypeNames.TryParse(name, out _))
                r.AddError($"--dtype must be {DTypeNames.Accepted}, got '{Clip(name ?? "")}'");
        });
        return option;
    }

    /// <summary>A word option that takes one of <paramref name="choices"/>.</summary>
    public static Option<string> Choice(string name, string @default, string description, params string[] choices)
    {
        var option = new Option<string>(name) { Description = $"{description}: {string.Join(", ", choices)}", HelpName = "WORD", DefaultValueFactory = _ => @default };
        option.Validators.Add(r =>
        {
            string? value = r.GetValueOrDefault<string>();
            if (!choices.Contains(value))
                r.AddError($"{name} must be {string.Join(", ", choices[..^1])} or {choices[^1]}, got '{Clip(value ?? "")}'");
        });
        return option;
    }

    /// <summary>The dtype a <see cref="DType"/> value names (the parser has refused any other).</summary>
    public static TorchSharp.torch.ScalarType DTypeOf(string name) =>
        DTypeNames.TryParse(name, out var dtype) ? dtype : throw new BenchUsageException($"--dtype must be {DTypeNames.Accepted}, got '{Clip(name)}'");

    /// <summary>The globs of a <c>--capture</c> value.</summary>
    public static string[] Globs(string value) => value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>An integer option at least <paramref name="min"/>, with a default.</summary>
    public static Option<int> Int(string name, int @default, int min, string description, string helpName = "N") => new(name)
    {
        Description = description,
        HelpName = helpName,
        DefaultValueFactory = _ => @default,
        CustomParser = r => ParseInt(r, name, min) ?? @default,
    };

    /// <summary>An integer option at least <paramref name="min"/>; null when not given.</summary>
    public static Option<int?> OptionalInt(string name, int min, string description, string helpName = "N") => new(name)
    {
        Description = description,
        HelpName = helpName,
        CustomParser = r => ParseInt(r, name, min),
    };

    /// <summary>A short piece of the user's input for a message.</summary>
    public static string Clip(string text) => text.Length <= 40 ? text : text[..40] + "…";

    private static int? ParseInt(ArgumentResult result, string name, int min)
    {
        if (result.Tokens.Count == 0)
            return null;
        string text = result.Tokens[0].Value;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value))
        {
            result.AddError($"{name} must be an integer, got '{Clip(text)}'");
            return null;
        }
        if (value < min)
        {
            result.AddError($"{name} must be at least {min}, got {value}");
            return null;
        }
        return value;
    }
}
