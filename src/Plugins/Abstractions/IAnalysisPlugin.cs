using System.Text.Json;
using System.Text.Json.Nodes;

namespace InterpMesh.Plugins;

/// <summary>
/// An analysis the gateway can run. Implement it in a class library with a public parameterless
/// constructor, ship the DLLs with a <c>plugin.json</c> in <c>plugins/&lt;id&gt;/</c>, and the
/// gateway loads it at start. One instance serves every run, possibly concurrently: keep no
/// per-run state in fields.
/// </summary>
public interface IAnalysisPlugin
{
    /// <summary>Who the plugin is and what it takes; read once when the plugin loads.</summary>
    PluginManifest Manifest { get; }

    /// <summary>Runs the analysis.</summary>
    /// <param name="parameters">The caller's parameters, already validated against <see cref="PluginManifest.ParameterSchema"/>'s required properties and types.</param>
    /// <param name="context">The model, progress, artifacts, cancellation, logging and metrics of this run.</param>
    /// <returns>The result; throw to fail the run (the message is shown to the caller).</returns>
    Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context);
}

/// <summary>A plugin's description of itself (SDK 2.0: a class with init properties, so a field added later is not a break).</summary>
public sealed class PluginManifest
{
    /// <summary>Unique id, lower case letters, digits and dashes (e.g. <c>probing</c>); must equal the plugin's folder name.</summary>
    public required string Id { get; init; }

    /// <summary>The plugin's own version (semantic versioning).</summary>
    public required string Version { get; init; }

    /// <summary>One or two sentences shown by <c>interpmesh plugins</c>.</summary>
    public required string Description { get; init; }

    /// <summary>
    /// The SDK version it was built against: write <see cref="Plugins.SdkVersion.Current"/> (a
    /// constant, so the value compiled into the plugin is the SDK it was built with).
    /// </summary>
    public required string SdkVersion { get; init; }

    /// <summary>JSON Schema (an object schema) of the parameters.</summary>
    public required JsonObject ParameterSchema { get; init; }

    /// <summary>What results contain, e.g. <c>table:per_layer</c>, <c>figure:accuracy</c>, <c>artifact:probe</c>.</summary>
    public IReadOnlyList<string> Produces { get; init; } = [];
}
