using InterpMesh.AnalysisWorker.Configuration;
using InterpMesh.AnalysisWorker.Jobs;
using InterpMesh.AnalysisWorker.Plugins;
using InterpMesh.AnalysisWorker.Telemetry;
using InterpMesh.Artifacts;
using InterpMesh.Jobs;
using InterpMesh.Routing;
using InterpMesh.Runtime.Execution;
using InterpMesh.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace InterpMesh.AnalysisWorker.Hosting;

/// <summary>
/// Builds the analysis worker (used by Program.cs, <c>interpmesh up</c>, the demo and tests): it
/// loads the plugins, publishes them to the job store, takes jobs from it and runs them against
/// the model services of <c>Worker:Models</c>, writing artifacts to the shared folder. It serves
/// gRPC health (grpc.health.v1) and Prometheus <c>/metrics</c> like every InterpMesh host, nothing else.
/// </summary>
public static class AnalysisWorkerApp
{
    /// <summary>The exit code of a worker that stopped itself because a plugin ignored cancellation (<c>Worker:RecycleStuckPlugins</c>).</summary>
    public const int RecycleExitCode = 3;

    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(args);
        configure?.Invoke(builder);
        var services = builder.Services;
        services.AddOptions<WorkerOptions>().BindConfiguration(WorkerOptions.Section).ValidateOnStart();
        services.AddSingleton<IValidateOptions<WorkerOptions>, WorkerOptionsValidator>();
        string root = builder.Environment.ContentRootPath;
        services.PostConfigure<WorkerOptions>(o =>
        {
            string Rooted(string p) => string.IsNullOrWhiteSpace(p) || Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(root, p));
            o.PluginsPath = Rooted(o.PluginsPath);
            o.ArtifactsPath = Rooted(o.ArtifactsPath);
            o.JobsPath = Rooted(o.JobsPath);
        });
        // Plugins use TorchSharp in this process: make libtorch loadable before any plugin loads.
        TorchRuntime.Initialize();
        services.AddSingleton<WorkerMetrics>();
        services.AddSingleton<WorkerIdentity>();
        services.AddSingleton<WorkerRecycler>();
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<WorkerOptions>>().Value;
            return new ModelRouter(o.Models, o.DefaultModel, $"worker {sp.GetRequiredService<WorkerIdentity>().Id} (Worker:Models)");
        });
        services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<WorkerOptions>>().Value;
            return new ArtifactStore(o.ArtifactsPath, o.MaxArtifactBytes, o.MaxArtifactMetadataBytes, "Worker:MaxArtifactBytes");
        });
        services.AddSingleton<PluginArtifacts>();
        services.AddSingleton<PluginCatalog>();
        services.AddSingleton<IPluginCatalog>(sp => sp.GetRequiredService<PluginCatalog>());
        services.AddSingleton(sp => OpenJobStore(sp.GetRequiredService<IOptions<WorkerOptions>>().Value, sp.GetRequiredService<ILoggerFactory>().CreateLogger("InterpMesh.AnalysisWorker.Jobs")));
        services.AddSingleton<IJobStore>(sp => sp.GetRequiredService<SqlJobStore>());
        services.AddSingleton<IJobQueue>(sp => sp.GetRequiredService<SqlJobStore>());
        services.AddSingleton<IPluginRegistry>(sp => sp.GetRequiredService<SqlJobStore>());
        services.AddSingleton<PluginPublisher>();
        services.AddHostedService(sp => sp.GetRequiredService<PluginPublisher>());
        services.AddHostedService<JobWorker>();

        builder.AddInterpMeshTelemetry("interpmesh-worker", WorkerOptions.Section, [WorkerMetrics.MeterName, WorkerMetrics.PluginMeterName], [WorkerTracing.SourceName]);
        builder.AddInterpMeshGrpc<WorkerMetrics>()
            .AddCheck("worker", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy("taking jobs"));

        var app = builder.Build();
        app.MapInterpMeshDefaults();
        // Check the settings, open the job store and load the plugins now, so that a wrong setting,
        // an unreachable database or a broken plugin is reported at start, and publish the catalog
        // before the first job is taken (gateways validate submissions against it).
        _ = app.Services.GetRequiredService<IOptions<WorkerOptions>>().Value;
        app.Services.GetRequiredService<SqlJobStore>();
        app.Services.GetRequiredService<PluginCatalog>();
        app.Services.GetRequiredService<PluginPublisher>().PublishAsync(CancellationToken.None).GetAwaiter().GetResult();
        return app;
    }

    /// <summary>
    /// The store <c>Worker:Jobs:ConnectionString</c> (or <see cref="JobStores.ConnectionStringVariable"/>)
    /// names, else the embedded file <c>jobs.db</c> in <c>Worker:JobsPath</c>; migrated to the current schema.
    /// </summary>
    internal static SqlJobStore OpenJobStore(WorkerOptions options, ILogger logger)
    {
        var storeOptions = new JobStoreOptions { MaxAttempts = options.Jobs.MaxAttempts, MaxRunningPerOwner = options.Jobs.MaxRunningPerKey };
        var (store, description) = JobStores.OpenConfiguredAsync(WorkerOptions.Section, options.Jobs.ConnectionString, options.JobsPath, storeOptions).GetAwaiter().GetResult();
        if (logger.IsEnabled(LogLevel.Information))
            logger.LogInformation("Jobs are taken from {Store}", description);
        return store;
    }
}
