using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Grpc.Net.Client;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Loading;

namespace InterpMesh.ModelService.Tests;

/// <summary>A real ModelService on a loopback port (Kestrel, HTTP/2), plus the same model loaded in-process for comparisons.</summary>
public class ServerFixture : IAsyncLifetime
{
    public const int ChunkBytes = 4096;
    public const long CaptureBudget = 8L << 20;

    private WebApplication? app;

    public GrpcChannel Channel { get; private set; } = null!;
    public Contracts.V1.ModelService.ModelServiceClient Client { get; private set; } = null!;
    public LoadedModel Local { get; private set; } = null!;
    public string Address { get; private set; } = "";

    /// <summary>The server's services (tests that drive the endpoint directly take its parts from here).</summary>
    public IServiceProvider Services => app!.Services;

    /// <summary>The server's engine (tests wait on what it has admitted instead of on the clock).</summary>
    public InterpMesh.Engine.ModelEngine Engine => app!.Services.GetRequiredService<ModelHost>().Engine!;

    /// <summary>The plain-HTTP metrics endpoint, e.g. http://127.0.0.1:41234/metrics.</summary>
    public string MetricsUrl { get; private set; } = "";

    public int MetricsPort { get; private set; }


    /// <summary>Settings a derived fixture changes (applied after the defaults).</summary>
    protected virtual Dictionary<string, string?> Overrides => [];

    public async Task InitializeAsync()
    {
        string model = RepoPaths.Models("stories260K/stories260K.bin");
        MetricsPort = Ports.Free();
        MetricsUrl = $"http://127.0.0.1:{MetricsPort}/metrics";
        app = ModelServiceApp.Build([], b =>
        {
            b.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["ModelService:ModelPath"] = model,
                ["ModelService:MaxChunkBytes"] = ChunkBytes.ToString(),
                ["ModelService:MaxCaptureBytes"] = CaptureBudget.ToString(),
                ["ModelService:MaxConcurrentRequests"] = "8",
                ["ModelService:MaxBatch"] = "16",
                ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
                ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
                ["Kestrel:Endpoints:Metrics:Url"] = $"http://127.0.0.1:{MetricsPort}",
                ["Kestrel:Endpoints:Metrics:Protocols"] = "Http1",
                ["Logging:LogLevel:Default"] = "Warning",
            });
            b.Configuration.AddInMemoryCollection(Overrides);
        });
        await app.StartAsync();
        await app.Services.GetRequiredService<ModelHost>().WhenLoaded;
        Address = app.Urls.First(u => !u.EndsWith($":{MetricsPort}", StringComparison.Ordinal));
        Channel = GrpcChannel.ForAddress(Address);
        Client = new Contracts.V1.ModelService.ModelServiceClient(Channel);
        Local = ModelLoader.Load(model);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        Local.Dispose();
        if (app is not null)
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}
