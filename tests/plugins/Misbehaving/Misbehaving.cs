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
    public PluginManifest Manifest { get; } = new PluginManifest
    {
        Id = "slow",
        Version = "1.0.0",
        Description = "sleeps in steps",
        SdkVersion = SdkVersion.Current,
        ParameterSchema = JsonNode.Parse("""{"type":"object","properties":{"steps":{"type":"integer","minimum":1}}}""")!.AsObject(),
        Produces = [],
    };

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
    public PluginManifest Manifest { get; } = new PluginManifest { Id = "throws", Version = "1.0.0", Description = "fails", SdkVersion = SdkVersion.Current, ParameterSchema = Schemas.Any(), Produces = [] };

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) =>
        throw new InvalidOperationException("the plugin broke on purpose");
}

/// <summary>Blocks its thread and ignores cancellation.</summary>
public sealed class Hangs : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new PluginManifest { Id = "hangs", Version = "1.0.0", Description = "never returns", SdkVersion = SdkVersion.Current, ParameterSchema = Schemas.Any(), Produces = [] };

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        Thread.Sleep(TimeSpan.FromSeconds(60));
        return Task.FromResult(new PluginResult());
    }
}

/// <summary>Built for an SDK major version the gateway does not host.</summary>
public sealed class FutureSdk : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new PluginManifest { Id = "future-sdk", Version = "1.0.0", Description = "targets SDK 3", SdkVersion = "3.0", ParameterSchema = Schemas.Any(), Produces = [] };

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) => Task.FromResult(new PluginResult());
}

/// <summary>Throws while the worker loads it.</summary>
public sealed class ThrowsOnLoad : IAnalysisPlugin
{
    public ThrowsOnLoad() => throw new InvalidOperationException("cannot start: missing licence file (on purpose)");

    public PluginManifest Manifest => throw new InvalidOperationException("unreachable");

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) => Task.FromResult(new PluginResult());
}

/// <summary>Calls the model <c>steps</c> times (a short forward each), reporting progress: a job that depends on a model service.</summary>
public sealed class Chatty : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new PluginManifest
    {
        Id = "chatty",
        Version = "1.0.0",
        Description = "runs the model in a loop",
        SdkVersion = SdkVersion.Current,
        ParameterSchema = JsonNode.Parse("""{"type":"object","properties":{"steps":{"type":"integer","minimum":1}}}""")!.AsObject(),
        Produces = [],
    };

    public async Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        int steps = parameters.TryGetProperty("steps", out var s) ? s.GetInt32() : 10;
        var request = new InterpMesh.Contracts.V1.RunRequest { Inputs = { new InterpMesh.Contracts.V1.Input { Text = "Once upon a time" } } };
        for (int i = 0; i < steps; i++)
        {
            await foreach (var output in context.Model.RunAsync(request, context.Cancellation))
                output.Activation?.Dispose();
            context.ReportProgress((double)(i + 1) / steps, $"call {i + 1}/{steps}");
            await Task.Delay(50, context.Cancellation);
        }
        return new PluginResult { Summary = new JsonObject { ["calls"] = steps } };
    }
}

/// <summary>Allocates (and touches) 16 MiB blocks until the runtime refuses: memory without bound.</summary>
public sealed class Hoards : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new PluginManifest { Id = "hoards", Version = "1.0.0", Description = "allocates without bound", SdkVersion = SdkVersion.Current, ParameterSchema = Schemas.Any(), Produces = [] };

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        var hoard = new List<byte[]>();
        while (true)
        {
            var block = new byte[16 << 20];
            for (int i = 0; i < block.Length; i += 4096)
                block[i] = 1;
            hoard.Add(block);
            context.ReportProgress(0, $"{hoard.Count * 16} MiB held");
        }
    }
}

/// <summary>Reports its assembly's version as the plugin version: two builds tell hot reload apart.</summary>
public sealed class Versioned : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new PluginManifest { Id = "versioned", Version = typeof(Versioned).Assembly.GetName().Version!.ToString(3), Description = "says which build is loaded", SdkVersion = SdkVersion.Current, ParameterSchema = Schemas.Any(), Produces = [] };

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context) =>
        Task.FromResult(new PluginResult { Summary = new JsonObject { ["version"] = Manifest.Version } });
}

/// <summary>Returns a table of about <c>bytes</c> bytes (one row of one string): a result too large to keep, when asked.</summary>
public sealed class Bulky : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new PluginManifest
    {
        Id = "bulky",
        Version = "1.0.0",
        Description = "returns as large a result as asked",
        SdkVersion = SdkVersion.Current,
        ParameterSchema = JsonNode.Parse("""{"type":"object","properties":{"bytes":{"type":"integer","minimum":0}}}""")!.AsObject(),
        Produces = [],
    };

    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        int bytes = parameters.TryGetProperty("bytes", out var b) ? b.GetInt32() : 1000;
        var row = new List<JsonNode?> { JsonValue.Create(new string('x', bytes)) };
        return Task.FromResult(new PluginResult
        {
            Summary = new JsonObject { ["bytes"] = bytes },
            Tables = [new ResultTable { Name = "payload", Columns = ["text"], Rows = [row] }],
        });
    }
}
