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

/// <summary>A plugin's description of itself.</summary>
/// <param name="Id">Unique id, lower case letters, digits and dashes (e.g. <c>probing</c>); must equal the plugin's folder name.</param>
/// <param name="Version">The plugin's own version (semantic versioning).</param>
/// <param name="Description">One or two sentences shown by <c>interpmesh plugins</c>.</param>
/// <param name="SdkVersion">The SDK version it was built against; use <see cref="Plugins.SdkVersion.Current"/>.</param>
/// <param name="ParameterSchema">JSON Schema (an object schema) of the parameters.</param>
/// <param name="Produces">What results contain, e.g. <c>table:per_layer</c>, <c>figure:accuracy</c>, <c>artifact:probe</c>.</param>
public sealed record PluginManifest(
    string Id,
    string Version,
    string Description,
    string SdkVersion,
    JsonObject ParameterSchema,
    IReadOnlyList<string> Produces);
