using InterpMesh.Gateway.Api;
using InterpMesh.Gateway.Artifacts;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Jobs;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Routing;
using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Runtime.Execution;
using InterpMesh.ServiceDefaults;
using Microsoft.Extensions.Options;

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
        services.AddSingleton<RpcRoles>();
        services.AddSingleton<RecordLimits>();
        services.AddSingleton<AuthInterceptor>();
        services.AddSingleton<ModelServiceForwarder>();
        services.AddSingleton<PluginCatalog>();
        services.AddSingleton<IPluginCatalog>(sp => sp.GetRequiredService<PluginCatalog>());
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
            return new ArtifactStore(o.ArtifactsPath, o.Limits.MaxArtifactBytes, o.Limits.MaxMetadataBytes);
        });
        services.AddSingleton<JobManager>();
        services.AddHostedService(sp => sp.GetRequiredService<JobManager>());

        builder.AddInterpMeshTelemetry("interpmesh-gateway", GatewayOptions.Section, [GatewayMetrics.MeterName, GatewayMetrics.PluginMeterName], [GatewayTracing.SourceName]);
        int maxRequest = builder.Configuration.GetValue<int?>($"{GatewayOptions.Section}:MaxRequestBytes") ?? new GatewayOptions().MaxRequestBytes;
        builder.AddInterpMeshGrpc<GatewayMetrics>(o =>
        {
            o.MaxReceiveMessageSize = maxRequest;
            o.MaxSendMessageSize = null;
            o.Interceptors.Add<AuthInterceptor>();
        }).AddCheck("gateway", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy("serving"));

        var app = builder.Build();
        app.MapInterpMeshDefaults();
        // Load plugins now, so a broken one is reported at start rather than at the first call.
        app.Services.GetRequiredService<PluginCatalog>();
        // Read every RPC's role now, and say which ones no key can call.
        foreach (var method in app.Services.GetRequiredService<RpcRoles>().Undeclared)
            app.Logger.LogWarning("{Method} declares no role in its proto and none is configured: it is refused for every key (Gateway:Authorization:Roles can grant one)", method);
        if (!app.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Auth.Enabled)
            app.Logger.LogWarning("Authentication is OFF (Gateway:Auth:Enabled=false): anyone who can reach this gateway can use it. Use this for local work only.");
        app.MapModelServiceForwarding();
        app.MapGrpcService<AnalysisEndpoint>();
        app.MapGrpcService<ArtifactEndpoint>();
        return app;
    }
}
