using System.Globalization;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace InterpMesh.Bench.Harness;

/// <summary>Prints a <see cref="BenchReport"/>: one JSON document on one line, or text.</summary>
internal static class ReportPrinter
{
    private static readonly JsonSerializerOptions Options = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = false,
    };

    public static void Print(BenchReport report, bool json, TextWriter stdout)
    {
        if (json)
            WriteJson(stdout, report.Values);
        else if (report.Text is not null)
            report.Text(stdout);
        else
            WriteLines(stdout, report.Values);
    }

    /// <summary>One JSON document on one line (snake_case keys as given, non-ASCII text left readable).</summary>
    public static void WriteJson(TextWriter stdout, object value) => stdout.WriteLine(JsonSerializer.Serialize(value, Options));

    /// <summary>One <c>key value</c> line per value, the values aligned.</summary>
    public static void WriteLines(TextWriter stdout, IReadOnlyDictionary<string, object?> values)
    {
        int width = values.Keys.Select(k => k.Length).DefaultIfEmpty(0).Max();
        foreach (var (key, value) in values)
            stdout.WriteLine($"  {key.PadRight(width)}  {Format(value)}");
    }

    private static string Format(object? value) => value switch
    {
        null => "-",
        bool b => b ? "true" : "false",
        double d => d.ToString("G6", CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}
