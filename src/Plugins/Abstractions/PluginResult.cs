using System.Text.Json.Nodes;

namespace InterpMesh.Plugins;

/// <summary>What a run returns: everything a CLI or a report can render.</summary>
public sealed class PluginResult
{
    /// <summary>The headline findings (e.g. best layer, top heads), as JSON.</summary>
    public JsonObject Summary { get; init; } = [];

    /// <summary>Named tables (e.g. one row per layer).</summary>
    public IList<ResultTable> Tables { get; init; } = [];

    /// <summary>Names of artifacts the run saved.</summary>
    public IList<string> Artifacts { get; init; } = [];

    /// <summary>Figures as PNG or SVG bytes.</summary>
    public IList<ResultFigure> Figures { get; init; } = [];
}

/// <summary>A table: column names and rows of JSON values (numbers, strings, booleans or null).</summary>
/// <param name="Name">Table name, e.g. <c>per_layer</c>.</param>
/// <param name="Columns">Column names.</param>
/// <param name="Rows">Rows, each with one value per column.</param>
public sealed record ResultTable(string Name, IReadOnlyList<string> Columns, IReadOnlyList<IReadOnlyList<JsonNode?>> Rows);

/// <summary>A rendered figure.</summary>
/// <param name="Name">Figure name, e.g. <c>accuracy_by_layer</c>.</param>
/// <param name="MediaType"><c>image/svg+xml</c> or <c>image/png</c>.</param>
/// <param name="Content">The image bytes.</param>
/// <param name="Caption">One line saying what it shows.</param>
public sealed record ResultFigure(string Name, string MediaType, byte[] Content, string Caption);
