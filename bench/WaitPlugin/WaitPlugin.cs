using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Plugins;

namespace InterpMesh.Bench.WaitPlugin;

/// <summary>
/// <c>bench-wait</c>: waits <c>ms</c> milliseconds in <c>reports</c> equal steps without computing
/// (a stand-in for a plugin waiting on a model call), reporting progress before each step with the
/// message <c>sent TICKS</c> (<see cref="DateTime.UtcNow"/> ticks at the <c>ReportProgress</c> call),
/// from which the <c>jobs</c> benchmark's watchers time WatchJob's event latency.
/// </summary>
public sealed class WaitPlugin : IAnalysisPlugin
{
    /// <summary>The prefix of every progress message; the UTC ticks follow.</summary>
    public const string SentPrefix = "sent ";

    public PluginManifest Manifest { get; } = new PluginManifest
    {
        Id = "bench-wait",
        Version = "1.0.0",
        Description = "Benchmark plugin: waits a fixed time, reporting timestamped progress (interpmesh-bench jobs).",
        SdkVersion = SdkVersion.Current,
        ParameterSchema = JsonNode.Parse("""
            {"type":"object","properties":{
              "ms":{"type":"integer","minimum":0,"maximum":600000},
              "reports":{"type":"integer","minimum":1,"maximum":1000}}}
            """)!.AsObject(),
        Produces = [],
    };

    public async Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        int ms = parameters.TryGetProperty("ms", out var m) ? m.GetInt32() : 50;
        int reports = parameters.TryGetProperty("reports", out var r) ? r.GetInt32() : 1;
        var step = TimeSpan.FromMilliseconds((double)ms / reports);
        for (int i = 0; i < reports; i++)
        {
            context.ReportProgress((double)i / reports, SentPrefix + DateTime.UtcNow.Ticks.ToString(CultureInfo.InvariantCulture));
            await Task.Delay(step, context.Cancellation).ConfigureAwait(false);
        }
        return new PluginResult { Summary = new JsonObject { ["waited_ms"] = ms } };
    }
}
