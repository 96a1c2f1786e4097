using Grpc.AspNetCore.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace InterpMesh.ServiceDefaults;

/// <summary>The set-up every InterpMesh host shares (see the project file).</summary>
public static class HostDefaults
{
    /// <summary>
    /// gRPC with detailed errors off (no server internals reach a client), the call-metrics
    /// interceptor first, reflection and health checks; Kestrel endpoints default to HTTP/2.
    /// <typeparamref name="TMetrics"/> must be registered as a singleton.
    /// </summary>
    public static IHealthChecksBuilder AddInterpMeshGrpc<TMetrics>(this WebApplicationBuilder builder, Action<GrpcServiceOptions>? configure = null)
        where TMetrics : class, ICallMetrics
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddSingleton<ICallMetrics>(sp => sp.GetRequiredService<TMetrics>());
        builder.Services.AddGrpc(o =>
        {
            o.EnableDetailedErrors = false;
            o.Interceptors.Add<CallMetricsInterceptor>();
            configure?.Invoke(o);
        });
        builder.Services.AddGrpcReflection();
        builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = HttpProtocols.Http2));
        return builder.Services.AddGrpcHealthChecks();
    }

    /// <summary>
    /// Metrics of <paramref name="meters"/> exported for Prometheus, and traces of
    /// <paramref name="traceSources"/> sent over OTLP when a collector is configured —
    /// <c>{section}:OtlpEndpoint</c> (with <c>{section}:OtlpProtocol</c> grpc or http/protobuf) or the
    /// standard <c>OTEL_EXPORTER_OTLP_ENDPOINT</c>; otherwise no spans are recorded at all.
    /// </summary>
    public static void AddInterpMeshTelemetry(this WebApplicationBuilder builder, string serviceName, string section, string[] meters, string[] traceSources)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(serviceName))
            .WithMetrics(m => m.AddMeter(meters).AddPrometheusExporter());
        var configuration = builder.Configuration;
        string? endpoint = configuration[$"{section}:OtlpEndpoint"];
        if (string.IsNullOrEmpty(endpoint) && string.IsNullOrEmpty(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]))
            return;
        bool http = configuration[$"{section}:OtlpProtocol"] == "http/protobuf";
        telemetry.WithTracing(t =>
        {
            // Prometheus scrapes are not worth a span each.
            t.AddSource(traceSources).AddAspNetCoreInstrumentation(o => o.Filter = context => context.Request.Path != "/metrics");
            if (string.IsNullOrEmpty(endpoint))
            {
                t.AddOtlpExporter();
                return;
            }
            t.AddOtlpExporter(o =>
            {
                // Invalid values are reported by the host's options validator at start.
                if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri))
                    return;
                o.Protocol = http ? OtlpExportProtocol.HttpProtobuf : OtlpExportProtocol.Grpc;
                o.Endpoint = http && uri.AbsolutePath is "" or "/" ? new Uri(uri, "/v1/traces") : uri;
            });
        });
    }

    /// <summary><c>/metrics</c> on plain HTTP/1.1 only (the metrics endpoint; gRPC is HTTP/2 only), the health and reflection services.</summary>
    public static void MapInterpMeshDefaults(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.UseOpenTelemetryPrometheusScrapingEndpoint(context => context.Request.Path == "/metrics" && context.Request.Protocol == "HTTP/1.1");
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
    }
}
