using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace InterpMesh.ModelService.Tests;

/// <summary>Start-up configuration errors, and trace export to a real OTLP/HTTP endpoint.</summary>
public sealed class TracingAndConfigurationTests
{
    private static WebApplication Service(Dictionary<string, string?> settings) =>
        ModelServiceApp.Build([], b => b.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        }.Concat(settings).ToDictionary()));

    [Fact]
    public async Task Invalid_configuration_fails_at_start_listing_every_error()
    {
        var error = await Assert.ThrowsAsync<OptionsValidationException>(async () =>
        {
            await using var app = Service(new()
            {
                ["ModelService:ModelPath"] = "/nonexistent/model.bin",
                ["ModelService:Device"] = "tpu",
                ["ModelService:BatchWindowMs"] = "-1",
                ["ModelService:OtlpEndpoint"] = "collector:4317",
                ["ModelService:OtlpProtocol"] = "udp",
                ["ModelService:GradientMemoryBytes"] = "-1",
            });
            await app.StartAsync();
        });
        foreach (var expected in new[] { "ModelPath '/nonexistent/model.bin' does not exist", "Device must be cpu, cuda or cuda:N, got 'tpu'",
                     "BatchWindowMs must be between 0 and 1000, got -1", "OtlpEndpoint must be an http(s) URL", "OtlpProtocol must be grpc or http/protobuf, got 'udp'",
                     "GradientMemoryBytes must be 0 (gradients off) or positive, got -1" })
            Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Spans_for_the_call_and_its_forward_reach_an_otlp_collector()
    {
        await using var collector = await OtlpCollector.StartAsync();

        var app = Service(new()
        {
            ["ModelService:ModelPath"] = RepoPaths.Models("stories260K/stories260K.bin"),
            ["ModelService:OtlpEndpoint"] = collector.Endpoint,
            ["ModelService:OtlpProtocol"] = "http/protobuf",
        });
        await app.StartAsync();
        await app.Services.GetRequiredService<ModelHost>().WhenLoaded;
        using (var channel = InterpMesh.Client.Channels.ForAddress(app.Urls.First()))
        {
            var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
            using var call = client.Run(new RunRequest { Inputs = { new Input { Tokens = new TokenIds { Ids = { 1, 403, 407 } } } } });
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        }
        // Stopping flushes the batch exporter.
        await app.StopAsync();
        await app.DisposeAsync();

        string all = collector.AllText;
        Assert.False(collector.Bodies.Count == 0, "the collector received no OTLP export");
        Assert.Contains("interpmesh.forward", all, StringComparison.Ordinal);
        Assert.Contains("interpmesh.batch_size", all, StringComparison.Ordinal);
        Assert.Contains("interpmesh.v1.ModelService/Run", all, StringComparison.Ordinal);
        Assert.Contains("interpmesh-modelservice", all, StringComparison.Ordinal);
    }
}
