using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Grpc;
using InterpMesh.ModelService.Telemetry;
using InterpMesh.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace InterpMesh.ModelService.Hosting;

/// <summary>Builds the ModelService web application (used by Program.cs, the CLI's serve and tests).</summary>
public static class ModelServiceApp
{
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(args);
        configure?.Invoke(builder);
        builder.Services.AddOptions<ModelServiceOptions>().BindConfiguration(ModelServiceOptions.Section).ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<ModelServiceOptions>, ModelServiceOptionsValidator>();
        // Relative paths in appsettings are relative to the app's content root, not to wherever it was started.
        string root = builder.Environment.ContentRootPath;
        builder.Services.PostConfigure<ModelServiceOptions>(o =>
        {
            if (!string.IsNullOrEmpty(o.ModelPath) && !Path.IsPathRooted(o.ModelPath))
                o.ModelPath = Path.GetFullPath(Path.Combine(root, o.ModelPath));
            if (!string.IsNullOrEmpty(o.TokenizerPath) && !Path.IsPathRooted(o.TokenizerPath))
                o.TokenizerPath = Path.GetFullPath(Path.Combine(root, o.TokenizerPath));
        });
        builder.Services.AddSingleton<ModelHost>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<ModelHost>());
        builder.Services.AddSingleton<ServiceMetrics>();
        builder.AddInterpMeshTelemetry("interpmesh-modelservice", ModelServiceOptions.Section, [ServiceMetrics.MeterName], [ServiceTracing.SourceName, ServiceTracing.EngineSourceName]);
        builder.AddInterpMeshGrpc<ServiceMetrics>().AddCheck<ModelHostHealth>("model");

        var app = builder.Build();
        app.MapInterpMeshDefaults();
        var host = app.Services.GetRequiredService<ModelHost>();
        app.Services.GetRequiredService<ServiceMetrics>().ObserveQueue(() => host.Engine?.Admitted ?? 0);
        app.MapGrpcService<ModelServiceEndpoint>();
        return app;
    }

    /// <summary>Adapts the host's load state to ASP.NET health checks (and so to the gRPC health service).</summary>
    private sealed class ModelHostHealth(ModelHost host) : Microsoft.Extensions.Diagnostics.HealthChecks.IHealthCheck
    {
        public Task<Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult> CheckHealthAsync(
            Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckContext context, CancellationToken cancellationToken = default) =>
            host.CheckHealthAsync(context, cancellationToken);
    }
}
