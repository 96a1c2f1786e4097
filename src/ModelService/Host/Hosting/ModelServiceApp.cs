using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Grpc;
using InterpMesh.ModelService.Telemetry;
using OpenTelemetry.Metrics;
using Microsoft.AspNetCore.Server.Kestrel.Core;
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
        builder.Services.AddOpenTelemetry().WithMetrics(m => m.AddMeter(ServiceMetrics.MeterName).AddPrometheusExporter());
        builder.Services.AddGrpc(o =>
        {
            o.EnableDetailedErrors = false;
            o.Interceptors.Add<MetricsInterceptor>();
        });
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks().AddCheck<ModelHostHealth>("model");
        builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = HttpProtocols.Http2));

        var app = builder.Build();
        // /metrics answers only on plain HTTP/1.1, i.e. on the metrics endpoint (gRPC is HTTP/2 only).
        app.UseOpenTelemetryPrometheusScrapingEndpoint(context => context.Request.Path == "/metrics" && context.Request.Protocol == "HTTP/1.1");
        var host = app.Services.GetRequiredService<ModelHost>();
        app.Services.GetRequiredService<ServiceMetrics>().ObserveQueue(() => host.Options.MaxConcurrentRequests - host.Admission.CurrentCount);
        app.MapGrpcService<ModelServiceEndpoint>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
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
