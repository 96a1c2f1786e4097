using System.Text.Json;

namespace InterpMesh.Plugins.Testing;

/// <summary>Runs a plugin the way the gateway's job runner calls it, from parameters as JSON text.</summary>
public static class PluginHarness
{
    /// <summary>
    /// Parses <paramref name="parametersJson"/> and calls <see cref="IAnalysisPlugin.RunAsync"/>.
    /// A typed plugin (<see cref="AnalysisPlugin{TParameters}"/>) checks the parameters itself and
    /// throws <see cref="InvalidParametersException"/> with the message a client would see.
    /// </summary>
    public static async Task<PluginResult> RunAsync(IAnalysisPlugin plugin, string parametersJson, IAnalysisContext context)
    {
        ArgumentNullException.ThrowIfNull(plugin);
        using var document = JsonDocument.Parse(parametersJson);
        return await plugin.RunAsync(document.RootElement.Clone(), context).ConfigureAwait(false);
    }
}
