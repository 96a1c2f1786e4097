using InterpMesh.Artifacts;
using InterpMesh.Gateway.Api;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Jobs;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Routing;
using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.Jobs;
using InterpMesh.Routing;
using InterpMesh.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Hosting;

/// <summary>
/// Builds the gateway web application (used by Program.cs, the CLI and tests): a stateless front
/// door over the shared job store. It runs no jobs and loads no plugin code: analysis workers
/// (<c>InterpMesh.AnalysisWorker</c>) take the jobs it queues and publish the plugins they can run,
/// which it lists and validates submissions against.
/// </summary>
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
        var configuration = builder.Configuration;
        services.PostConfigure<GatewayOptions>(o =>
        {
            string Rooted(string p) => Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(root, p));
            // Settings of gateways that ran jobs: refused by the validator, naming where they went.
            o.MovedKeysSet.AddRange(GatewayOptionsValidator.MovedKeys(configuration));
            o.ArtifactsPath = Rooted(o.ArtifactsPath);
            o.JobsPath = Rooted(o.JobsPath);
            if (o.Auth.KeysFile is { Length: > 0 } keys)
                o.Auth.KeysFile = Rooted(keys);
        });
        services.AddSingleton<GatewayMetrics>();
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
            return new ModelRouter(o.Models, o.DefaultModel, "this gateway");
        });
        services.AddSingleton<ApiKeys>();
        services.AddSingleton<RpcRoles>();
        services.AddSingleton<RecordLimits>();
        services.AddSingleton<AuthInterceptor>();
        services.AddSingleton<ModelServiceForwarder>();
        // Plugins as analysis workers published them in the job store.
        services.AddSingleton<StorePluginCatalog>();
        services.AddSingleton<IPluginCatalog>(sp => sp.GetRequiredService<StorePluginCatalog>());
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<GatewayOptions>>().Value;
            return new ArtifactStore(o.ArtifactsPath, o.Limits.MaxArtifactBytes, o.Limits.MaxMetadataBytes);
        });
        // Jobs live in the shared store (PostgreSQL, or the embedded file); this process queues and
        // serves them (JobService) and keeps the store's retention and usage metrics (JobHousekeeping);
        // analysis workers run them.
        services.AddSingleton(sp => OpenJobStore(sp.GetRequiredService<IOptions<GatewayOptions>>().Value, sp.GetRequiredService<ILoggerFactory>().CreateLogger("InterpMesh.Gateway.Jobs")));
        services.AddSingleton<IJobStore>(sp => sp.GetRequiredService<SqlJobStore>());
        services.AddSingleton<IPluginRegistry>(sp => sp.GetRequiredService<SqlJobStore>());
        services.AddSingleton<IGatewayRegistry>(sp => sp.GetRequiredService<SqlJobStore>());
        // Replicas divide each key's rate limit: the store counts the live ones.
        services.AddSingleton<ReplicaShare>();
        services.AddSingleton<GatewayPresence>();
        services.AddHostedService(sp => sp.GetRequiredService<GatewayPresence>());
        services.AddSingleton<JobService>();
        services.AddHostedService<JobHousekeeping>();

        builder.AddInterpMeshTelemetry("interpmesh-gateway", GatewayOptions.Section, [GatewayMetrics.MeterName], [GatewayTracing.SourceName]);
        int maxRequest = builder.Configuration.GetValue<int?>($"{GatewayOptions.Section}:MaxRequestBytes") ?? new GatewayOptions().MaxRequestBytes;
        builder.AddInterpMeshGrpc<GatewayMetrics>(o =>
        {
            o.MaxReceiveMessageSize = maxRequest;
            o.MaxSendMessageSize = null;
            o.Interceptors.Add<AuthInterceptor>();
        }).AddCheck("gateway", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy("serving"));
        // REST/JSON, gRPC-Web and CORS for browsers and curl (docs/rest.md).
        builder.AddWebApi();

        var app = builder.Build();
        app.MapInterpMeshDefaults();
        // Check the settings (a key that moved to the worker included) and open the job store now,
        // so that either stops the start with its reason rather than failing the first call.
        _ = app.Services.GetRequiredService<IOptions<GatewayOptions>>().Value;
        app.Services.GetRequiredService<SqlJobStore>();
        // Count the replicas before the first call, so a key's first burst is this replica's share.
        app.Services.GetRequiredService<GatewayPresence>().StampAsync(CancellationToken.None).GetAwaiter().GetResult();
        // Read every RPC's role now, and say which ones no key can call.
        foreach (var method in app.Services.GetRequiredService<RpcRoles>().Undeclared)
            app.Logger.LogWarning("{Method} declares no role in its proto and none is configured: it is refused for every key (Gateway:Authorization:Roles can grant one)", method);
        if (!app.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.Auth.Enabled)
            app.Logger.LogWarning("Authentication is OFF (Gateway:Auth:Enabled=false): anyone who can reach this gateway can use it. Use this for local work only.");
        app.UseWebApi();
        app.MapModelServiceForwarding().EnableGrpcWeb();
        app.MapModelServiceHttpRoutes();
        app.MapGrpcService<AnalysisEndpoint>().EnableGrpcWeb();
        app.MapGrpcService<ArtifactEndpoint>().EnableGrpcWeb();
        // The web console at / (docs/console.md).
        app.MapConsole();
        return app;
    }

    /// <summary>
    /// The store <c>Gateway:Jobs:ConnectionString</c> (or <see cref="JobsOptions.ConnectionStringVariable"/>)
    /// names, else the embedded file <c>jobs.db</c> in <c>Gateway:JobsPath</c>; migrated to the current schema.
    /// </summary>
    internal static SqlJobStore OpenJobStore(GatewayOptions options, ILogger logger)
    {
        // Takes, attempts and per-key running limits are the workers' (Worker:Jobs); the gateway only submits, reads and cancels.
        var (store, kept) = JobStores.OpenConfiguredAsync(GatewayOptions.Section, options.Jobs.ConnectionString, options.JobsPath, new JobStoreOptions()).GetAwaiter().GetResult();
        // Records of gateways before the shared store (one JSON file per job) move into it once.
        string folder = options.JobsPath;
        int imported = LegacyJobFiles.ImportAsync(store, folder, logger).GetAwaiter().GetResult();
        if (imported > 0)
            logger.LogWarning("Imported {Count} job records of an older gateway from {Folder} into the job store (the files are in {Imported})", imported, folder, LegacyJobFiles.ImportedFolder);
        if (logger.IsEnabled(LogLevel.Information))
            logger.LogInformation("Jobs are kept in {Store}", kept);
        return store;
    }
}
