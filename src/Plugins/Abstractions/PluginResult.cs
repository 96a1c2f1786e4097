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
public sealed class ResultTable
{
    /// <summary>Table name, e.g. <c>per_layer</c>.</summary>
    public required string Name { get; init; }

    /// <summary>Column names.</summary>
    public required IReadOnlyList<string> Columns { get; init; }

    /// <summary>Rows, each with one value per column.</summary>
    public required IReadOnlyList<IReadOnlyList<JsonNode?>> Rows { get; init; }
}

/// <summary>A rendered figure.</summary>
public sealed class ResultFigure
{
    /// <summary>Figure name, e.g. <c>accuracy_by_layer</c>.</summary>
    public required string Name { get; init; }

    /// <summary><c>image/svg+xml</c> or <c>image/png</c>.</summary>
    public required string MediaType { get; init; }

    /// <summary>The image bytes.</summary>
    public required byte[] Content { get; init; }

    /// <summary>One line saying what it shows.</summary>
    public required string Caption { get; init; }
}
