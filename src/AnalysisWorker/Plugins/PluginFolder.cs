using System.Text.Json;
using System.Text.RegularExpressions;

namespace InterpMesh.AnalysisWorker.Plugins;

/// <summary>
/// <c>plugin.json</c>: which DLL of the folder holds the plugin.
/// <code>{ "id": "probing", "assembly": "InterpMesh.Plugins.Probing.dll" }</code>
/// Optional <c>"type"</c>: the plugin class's full name, when the assembly has more than one.
/// </summary>
public sealed partial record PluginFolder(string Id, string Assembly, string? Type)
{
    public const string FileName = "plugin.json";
    private const int MaxBytes = 64 << 10;

    // \z, not $: $ also matches before a final newline ("p\n" would pass).
    [GeneratedRegex(@"\A[a-z0-9][a-z0-9-]{0,62}\z")]
    internal static partial Regex IdPattern();

    [GeneratedRegex(@"\A[A-Za-z0-9][A-Za-z0-9._-]*\.dll\z")]
    private static partial Regex AssemblyPattern();

    /// <summary>Reads and checks <c>plugin.json</c> of <paramref name="folder"/>; errors say what to fix.</summary>
    public static PluginFolder Read(string folder)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path))
            throw new InvalidDataException($"{FileName} is missing; add one like {{\"id\": \"{Path.GetFileName(folder)}\", \"assembly\": \"MyPlugin.dll\"}}");
        var info = new FileInfo(path);
        if (info.Length > MaxBytes)
            throw new InvalidDataException($"{FileName} is {info.Length} bytes; the limit is {MaxBytes}");
        JsonElement root;
        try
        {
            var bytes = File.ReadAllBytes(path);
            // JsonDocument checks UTF-8 only when a string is read (InvalidOperationException then).
            if (!System.Text.Unicode.Utf8.IsValid(bytes))
                throw new InvalidDataException($"{FileName} is not valid UTF-8 text; save it as UTF-8 JSON");
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 8 });
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{FileName} is not valid JSON: {e.Message}");
        }
        if (root.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{FileName} must be a JSON object with \"id\" and \"assembly\"");
        string? Text(string name) => root.TryGetProperty(name, out var v) ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw new InvalidDataException($"{FileName}: \"{name}\" must be a string") : null;
        var id = Text("id") ?? throw new InvalidDataException($"{FileName}: \"id\" is missing");
        var assembly = Text("assembly") ?? throw new InvalidDataException($"{FileName}: \"assembly\" is missing (the DLL holding the plugin class)");
        var type = Text("type");
        if (!IdPattern().IsMatch(id))
            throw new InvalidDataException($"{FileName}: id '{id}' must be lower-case letters, digits and dashes");
        if (id != Path.GetFileName(folder))
            throw new InvalidDataException($"{FileName}: id '{id}' must equal the folder name '{Path.GetFileName(folder)}'");
        if (!AssemblyPattern().IsMatch(assembly))
            throw new InvalidDataException($"{FileName}: assembly '{assembly}' must be a .dll file name in the plugin folder (no path)");
        return new PluginFolder(id, assembly, type);
    }
}
