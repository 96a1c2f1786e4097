using InterpMesh.Gateway.Api;
using InterpMesh.Gateway.Artifacts;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Jobs;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Routing;
using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Runtime.Execution;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace InterpMesh.Gateway.Hosting;

/// <summary>Builds the gateway web application (used by Program.cs, the CLI and tests).</summary>
public static class GatewayApp
{
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(args);
        configure?.Invoke(builder);
        var services = builder.Services;
        services.AddOptions<GatewayOptions>().BindConfiguration(GatewayOptions.Section).ValidateOnStart();
        services.AddSingleton<IValidateOptions<GatewayOptions>, GatewayOptionsValidator>();
        string root = builder.Environment.ContentRootPath;
        services.PostConfigure<GatewayOptions>(o =>
        {
            string Rooted(string p) => Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(root, p));
            o.PluginsPath = Rooted(o.PluginsPath);
            o.ArtifactsPath = Rooted(o.ArtifactsPath);
            o.JobsPath = Rooted(o.JobsPath);
            if (o.Auth.KeysFile is { Length: > 0 } keys)
                o.Auth.KeysFile = Rooted(keys);
        });
        // Plugins use TorchSharp in this process: make libtorch loadable before any plugin loads.
        TorchRuntime.Initialize();
        services.AddSingleton<GatewayMetrics>();
        services.AddSingleton<ModelRouter>();
        services.AddSingleton<ApiKeys>();
        services.AddSingleton<AuthInterceptor>();
        services.AddSingleton<PluginCatalog>();
        services.AddSingleton<IPluginCatalog>(sp => sp.GetRequiredService<PluginCatalog>());
        services.AddSingleton(sp => new ArtifactStore(sp.GetRequiredService<IOptions<GatewayOptions>>().Value.ArtifactsPath));
        services.AddSingleton<JobManager>();
        services.AddHostedService(sp => sp.GetRequiredService<JobManager>());

        var telemetry = services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService("interpmesh-gateway"))
            .WithMetrics(m => m.AddMeter(GatewayMetrics.MeterName, GatewayMetrics.PluginMeterName).AddPrometheusExporter());
        AddTraceExport(telemetry, builder.Configuration);

        int maxRequest = builder.Configuration.GetValue<int?>($"{GatewayOptions.Section}:MaxRequestBytes") ?? new GatewayOptions().MaxRequestBytes;
        services.AddGrpc(o =>
        {
            o.EnableDetailedErrors = false;
            o.MaxReceiveMessageSize = maxRequest;
            o.MaxSendMessageSize = null;
            o.Interceptors.Add<MetricsInterceptor>();
            o.Interceptors.Add<AuthInterceptor>();
        });
        services.AddGrpcReflection();
        services.AddGrpcHealthChecks().AddCheck("gateway", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy("serving"));
        builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = HttpProtocols.Http2));

        var app = builder.Build();
        app.UseOpenTelemetryPrometheusScrapingEndpoint(context => context.Request.Path == "/metrics" && context.Request.Protocol == "HTTP/1.1");
        // Load plugins now, so a broken one is reported at start rather than at the first call.
        app.Services.GetRequiredService<PluginCatalog>();
        if (!app.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Auth.Enabled)
            app.Logger.LogWarning("Authentication is OFF (Gateway:Auth:Enabled=false): anyone who can reach this gateway can use it. Use this for local work only.");
        app.MapGrpcService<ModelServiceProxy>();
        app.MapGrpcService<AnalysisEndpoint>();
        app.MapGrpcService<ArtifactEndpoint>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
        return app;
    }

    /// <summary>Traces go out over OTLP only when a collector is configured; the model-service client propagates the trace context.</summary>
    private static void AddTraceExport(OpenTelemetry.OpenTelemetryBuilder telemetry, IConfiguration configuration)
    {
        string? endpoint = configuration[$"{GatewayOptions.Section}:OtlpEndpoint"];
        if (string.IsNullOrEmpty(endpoint) && string.IsNullOrEmpty(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
            return;
        bool http = configuration[$"{GatewayOptions.Section}:OtlpProtocol"] == "http/protobuf";
        telemetry.WithTracing(t =>
        {
            t.AddSource(GatewayTracing.SourceName).AddAspNetCoreInstrumentation(o => o.Filter = context => context.Request.Path != "/metrics");
            t.AddOtlpExporter(o =>
            {
                if (string.IsNullOrEmpty(endpoint) || !Uri.TryCreate(endpoint, UriKind.Absolute, out var uri))
                    return;
                o.Protocol = http ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc;
                o.Endpoint = http && uri.AbsolutePath is "" or "/" ? new Uri(uri, "/v1/traces") : uri;
            });
        });
    }
}
