using InterpMesh.Cli.CommandLine;
using InterpMesh.Gateway.Hosting;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Cli.Bench;

/// <summary>In-process model service and gateway on loopback for benchmarks, configured only by what is passed here.</summary>
internal static class BenchMesh
{
    /// <summary>The checkout this binary was built from (benchmarks read models/, bench/ and the built plugins/).</summary>
    public static string Repository()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "InterpMesh.sln")))
                return d.FullName;
        }
        throw new UsageException("this benchmark runs from a checkout (it needs models/, bench/ and the built plugins/)");
    }

    /// <summary>Writes a random-weights model of a preset's shape in the Hugging Face layout (seed 1234).</summary>
    public static void SaveRandomModel(InterpMesh.Runtime.Architectures.ModelConfig config, string dir)
    {
        using var worker = new InterpMesh.Runtime.Execution.TorchWorker();
        worker.Run(() =>
        {
            using var model = InterpMesh.Runtime.Architectures.Presets.CreateRandom(config, seed: 1234);
            InterpMesh.ToyModels.Export.HfCheckpointWriter.Save(model, dir);
            return 0;
        });
    }

    public static WebApplication StartModelService(string modelPath, int threads, Dictionary<string, string?>? extra = null)
    {
        var app = ModelServiceApp.Build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["ModelService:ModelPath"] = modelPath,
                ["ModelService:Threads"] = threads.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
                ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
                ["Logging:LogLevel:Default"] = "Warning",
            });
            b.Configuration.AddInMemoryCollection(extra ?? []);
        });
        app.StartAsync().GetAwaiter().GetResult();
        app.Services.GetRequiredService<ModelHost>().WhenLoaded.GetAwaiter().GetResult();
        return app;
    }

    /// <summary>A gateway without auth or rate limits in front of one model service.</summary>
    public static WebApplication StartGateway(string modelAddress, string pluginsPath, string dataDir)
    {
        var app = GatewayApp.Build([], b =>
        {
            b.Configuration.Sources.Clear();
            b.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Gateway:Models:bench:Endpoints:0"] = modelAddress,
                ["Gateway:PluginsPath"] = pluginsPath,
                ["Gateway:ArtifactsPath"] = Path.Combine(dataDir, "artifacts"),
                ["Gateway:JobsPath"] = Path.Combine(dataDir, "jobs"),
                ["Gateway:Auth:Enabled"] = "false",
                ["Gateway:RateLimit:RequestsPerSecond"] = "0",
                ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
                ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
                ["Logging:LogLevel:Default"] = "Error",
            });
        });
        app.StartAsync().GetAwaiter().GetResult();
        return app;
    }

    public static void Stop(params WebApplication[] apps)
    {
        foreach (var app in apps)
        {
            app.StopAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }
}
