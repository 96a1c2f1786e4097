using System.Text.Encodings.Web;
using System.Text.Json;

namespace InterpMesh.Cli.Local;

/// <summary>One JSON document per line, snake_case keys, non-ASCII text left readable.</summary>
internal static class JsonOutput
{
    private static readonly JsonSerializerOptions Options = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = false,
    };

    public static void Write(TextWriter stdout, object value) => stdout.WriteLine(JsonSerializer.Serialize(value, Options));
}
