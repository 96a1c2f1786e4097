using System.Text.Json;
using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Tests;

/// <summary>Traces propagate client → gateway → model service, including the model calls a plugin makes in a job.</summary>
[Collection("gateways")]
public sealed class TracingTests
{
    [Fact]
    public async Task One_trace_per_call_and_per_analysis_reaches_the_collector_from_every_service()
    {
        await using var collector = await OtlpCollector.StartAsync();
        var otlp = new Dictionary<string, string?> { ["OtlpEndpoint"] = collector.Endpoint, ["OtlpProtocol"] = "http/protobuf" };

        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"),
            otlp.ToDictionary(kv => "ModelService:" + kv.Key, kv => kv.Value));
        var plugins = await TestPlugins.PluginsFolderAsync();
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, Path.Combine(Path.GetTempPath(), "interpmesh-tr-" + Guid.NewGuid().ToString("N")),
            otlp.ToDictionary(kv => "Gateway:" + kv.Key, kv => kv.Value).Concat(otlp.Select(kv => KeyValuePair.Create("Worker:" + kv.Key, kv.Value))).ToDictionary());
        string runTrace = Convert.ToHexStringLower(Guid.NewGuid().ToByteArray());
        string jobTrace = Convert.ToHexStringLower(Guid.NewGuid().ToByteArray());
        Metadata Headers(string trace) => new() { { "authorization", $"Bearer {Mesh.AliceKey}" }, { "traceparent", $"00-{trace}-{Convert.ToHexStringLower(Guid.NewGuid().ToByteArray()[..8])}-01" } };
        using (var channel = Mesh.Channel(address))
        {
            using (var run = new Contracts.V1.ModelService.ModelServiceClient(channel).Run(new RunRequest { Inputs = { new Input { Text = "Once upon a time" } } }, Headers(runTrace)))
            {
                await foreach (var _ in run.ResponseStream.ReadAllAsync()) { }
            }
            using var analysis = new AnalysisService.AnalysisServiceClient(channel).RunAnalysis(
                new AnalysisRequest { Plugin = "token-stats", ParametersJson = JsonSerializer.Serialize(new { texts = new[] { "A cat." } }) }, Headers(jobTrace));
            await foreach (var _ in analysis.ResponseStream.ReadAllAsync()) { }
        }
        foreach (var app in new[] { gateway, service })
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }

        Assert.False(collector.Bodies.Count == 0, "the collector received nothing");
        Assert.True(collector.Exported("interpmesh-gateway", runTrace, "ModelService/Run"), "the gateway's Run span is not in the client's trace");
        Assert.True(collector.Exported("interpmesh-modelservice", runTrace, "interpmesh.forward"), "the model service's forward is not in the client's trace");
        // The job runs on the analysis worker, in the trace of the call that submitted it.
        Assert.True(collector.Exported("interpmesh-worker", jobTrace, "interpmesh.job"), "the worker's job span is not in the analysis call's trace");
        Assert.True(collector.Exported("interpmesh-modelservice", jobTrace, "interpmesh.forward"), "the plugin's model calls are not in the analysis call's trace");
    }
}
