using InterpMesh.Cli.CommandLine;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Cli.Serve;

/// <summary><c>interpmesh serve --model PATH</c>: runs the ModelService in this process until Ctrl-C.</summary>
internal static class ServeCommand
{
    public static int Run(CliArgs args, TextWriter stdout)
    {
        string model = args.RequireText("model", "a Hugging Face folder or a llama2.c .bin");
        int port = args.Int("grpc-port", min: 0) ?? 50051;
        string bind = args.Text("bind") ?? "127.0.0.1";
        int? metricsPort = args.Int("metrics-port", min: 0);
        var settings = new Dictionary<string, string?>
        {
            ["ModelService:ModelPath"] = Path.GetFullPath(model),
            ["ModelService:TokenizerPath"] = args.Text("tokenizer") is { } t ? Path.GetFullPath(t) : null,
            ["ModelService:Device"] = args.Text("device") ?? "cpu",
            ["ModelService:DType"] = args.Text("dtype") ?? "float32",
            ["ModelService:Threads"] = (args.Int("threads", min: 1) ?? 0).ToString(),
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://{bind}:{port}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
            ["Logging:LogLevel:InterpMesh"] = "Information",
        };
        if (metricsPort is int mp)
        {
            settings["Kestrel:Endpoints:Metrics:Url"] = $"http://{bind}:{mp}";
            settings["Kestrel:Endpoints:Metrics:Protocols"] = "Http1";
        }
        args.RejectUnknown("serve");
        var app = ModelServiceApp.Build([], b => b.Configuration.AddInMemoryCollection(settings));
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (Microsoft.Extensions.Options.OptionsValidationException e)
        {
            throw new ArgumentException(string.Join("; ", e.Failures));
        }
        var host = app.Services.GetRequiredService<ModelHost>();
        try
        {
            host.WhenLoaded.GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            app.StopAsync().GetAwaiter().GetResult();
            throw new InvalidOperationException($"the model failed to load: {e.Message}");
        }
        stdout.WriteLine($"serving {host.Model!.Source} on {string.Join(", ", app.Urls)} (gRPC: interpmesh.v1.ModelService, health, reflection" +
            (metricsPort is not null ? "; Prometheus /metrics on the HTTP/1.1 port" : "") + "); Ctrl-C stops");
        stdout.WriteLine($"  try: interpmesh info --server {app.Urls.First()} --json");
        stdout.Flush();
        app.WaitForShutdownAsync().GetAwaiter().GetResult();
        return 0;
    }
}
