using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Plugins;

namespace Misbehaving;

internal static class Schemas
{
    public static JsonObject Any() => new() { ["type"] = "object" };
}

/// <summary>Takes <c>steps</c> × 100 ms, reporting progress, honouring cancellation.</summary>
public sealed class Slow : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new("slow", "1.0.0", "sleeps in steps", SdkVersion.Current,
        JsonNode.Parse("""{"type":"object","properties":{"steps":{"type":"integer","minimum":1}}}""")!.AsObject(), []);

    public async Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        int steps = parameters.TryGetProperty("steps", out var s) ? s.GetInt32() : 10;
        for (int i = 0; i < steps; i++)
        {
            context.ReportProgress((double)i / steps, $"step {i + 1}/{steps}");
            await Task.Delay(100, context.Cancellation);
        }
        return new PluginResult { Summary = new JsonObject { ["steps"] = steps } };
    }
}

/// <summary>Fails every run.</summary>
public sealed class Throws : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new("throws", "1.0.0", "fails", SdkVersion.Current, Schemas.Any(), []);

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) =>
        throw new InvalidOperationException("the plugin broke on purpose");
}

/// <summary>Blocks its thread and ignores cancellation.</summary>
public sealed class Hangs : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new("hangs", "1.0.0", "never returns", SdkVersion.Current, Schemas.Any(), []);

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        Thread.Sleep(TimeSpan.FromSeconds(60));
        return Task.FromResult(new PluginResult());
    }
}

/// <summary>Built for an SDK major version the gateway does not host.</summary>
public sealed class FutureSdk : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new("future-sdk", "1.0.0", "targets SDK 2", "2.0", Schemas.Any(), []);

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) => Task.FromResult(new PluginResult());
}

/// <summary>Throws while the gateway loads it.</summary>
public sealed class ThrowsOnLoad : IAnalysisPlugin
{
    public ThrowsOnLoad() => throw new InvalidOperationException("cannot start: missing licence file (on purpose)");

    public PluginManifest Manifest => throw new InvalidOperationException("unreachable");

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) => Task.FromResult(new PluginResult());
}
