using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Grpc;
using InterpMesh.ModelService.Telemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;
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
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("interpmesh-modelservice"))
            .WithMetrics(m => m.AddMeter(ServiceMetrics.MeterName).AddPrometheusExporter());
        AddTraceExport(telemetry, builder.Configuration);
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
        app.Services.GetRequiredService<ServiceMetrics>().ObserveQueue(() => host.Engine?.Admitted ?? 0);
        app.MapGrpcService<ModelServiceEndpoint>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
        return app;
    }

    /// <summary>Traces go out over OTLP only when a collector is configured; otherwise no spans are recorded at all.</summary>
    private static void AddTraceExport(OpenTelemetry.OpenTelemetryBuilder telemetry, IConfiguration configuration)
    {
        string? endpoint = configuration[$"{ModelServiceOptions.Section}:OtlpEndpoint"];
        bool standardVariable = !string.IsNullOrEmpty(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        if (string.IsNullOrEmpty(endpoint) && !standardVariable)
            return;
        string protocol = configuration[$"{ModelServiceOptions.Section}:OtlpProtocol"] ?? "grpc";
        telemetry.WithTracing(t =>
        {
            t.AddSource(ServiceTracing.SourceName, ServiceTracing.EngineSourceName)
                // Prometheus scrapes are not worth a span each.
                .AddAspNetCoreInstrumentation(o => o.Filter = context => context.Request.Path != "/metrics");
            if (string.IsNullOrEmpty(endpoint))
            {
                t.AddOtlpExporter();
                return;
            }
            t.AddOtlpExporter(o =>
            {
                // Invalid values are reported by the options validator at start.
                if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri))
                    return;
                if (protocol == "http/protobuf")
                {
                    o.Protocol = OtlpExportProtocol.HttpProtobuf;
                    o.Endpoint = uri.AbsolutePath is "" or "/" ? new Uri(uri, "/v1/traces") : uri;
                }
                else
                {
                    o.Protocol = OtlpExportProtocol.Grpc;
                    o.Endpoint = uri;
                }
            });
        });
    }

    /// <summary>Adapts the host's load state to ASP.NET health checks (and so to the gRPC health service).</summary>
    private sealed class ModelHostHealth(ModelHost host) : Microsoft.Extensions.Diagnostics.HealthChecks.IHealthCheck
    {
        public Task<Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult> CheckHealthAsync(
            Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckContext context, CancellationToken cancellationToken = default) =>
            host.CheckHealthAsync(context, cancellationToken);
    }
}
