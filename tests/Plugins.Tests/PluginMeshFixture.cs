using Grpc.Core;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Plugins.Tests;

/// <summary>A model service for one model, a gateway in front of it and an analysis worker that loads the built-in plugins.</summary>
public abstract class PluginMeshFixture(string modelPath) : IAsyncLifetime
{
    private WebApplication? service;
    private WebApplication? gateway;

    public string DataPath { get; } = Path.Combine(Path.GetTempPath(), "interpmesh-plugin-" + Guid.NewGuid().ToString("N"));
    public Grpc.Net.Client.GrpcChannel Channel { get; private set; } = null!;

    /// <summary>The gateway's HTTP/1.1 Web endpoint (REST routes, gRPC-Web and the web console at <c>/</c>).</summary>
    public string WebUrl { get; } = $"http://127.0.0.1:{Ports.Free()}";
    public IServiceProvider GatewayServices => gateway!.Services;

    /// <summary>The analysis worker (it runs the plugins and saves their artifacts).</summary>
    public IServiceProvider WorkerServices => Mesh.WorkerOf(gateway!).Services;

    /// <summary>The model to serve; a derived fixture may create it first.</summary>
    protected virtual Task<string> ModelPathAsync() => Task.FromResult(modelPath);

    public async Task InitializeAsync()
    {
        string address;
        (service, address) = await Mesh.StartModelServiceAsync(await ModelPathAsync());
        // The built-in plugins lay themselves out in <repo>/plugins/ when they build.
        (gateway, var gatewayAddress) = await Mesh.StartGatewayAsync([address], Path.Combine(RepoPaths.Root, "plugins"), DataPath, settings: new()
        {
            ["Kestrel:Endpoints:Web:Url"] = WebUrl,
            ["Kestrel:Endpoints:Web:Protocols"] = "Http1",
        });
        Channel = Mesh.Channel(gatewayAddress);
    }

    /// <summary>Runs an analysis to its end and returns the final job record.</summary>
    public async Task<Job> RunAsync(string plugin, string parametersJson)
    {
        var client = new AnalysisService.AnalysisServiceClient(Channel);
        using var call = client.RunAnalysis(new AnalysisRequest { Plugin = plugin, ParametersJson = parametersJson }, Mesh.As(Mesh.AliceKey));
        Job? final = null;
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            final = e.Finished ?? final;
        return final!;
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Mesh.StopAsync(gateway, service);
    }
}
