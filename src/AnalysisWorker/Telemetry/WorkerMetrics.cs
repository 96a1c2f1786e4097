using System.Diagnostics.Metrics;
using InterpMesh.ServiceDefaults;

namespace InterpMesh.AnalysisWorker.Telemetry;

/// <summary>
/// The worker's instruments (meter <c>InterpMesh.Worker</c>) and the meter plugins get
/// (<c>InterpMesh.Plugins</c>), exported to Prometheus on the metrics port. Tags are
/// low-cardinality: plugin, outcome.
/// </summary>
public sealed class WorkerMetrics : ICallMetrics, IDisposable
{
    /// <summary>The store-wide queue depth (Prometheus: <c>interpmesh_jobs_queued</c>), which the worker HPA scales on.</summary>
    public const string QueuedGauge = "interpmesh.jobs.queued";

    public const string MeterName = "InterpMesh.Worker";

    /// <summary>The meter plugins get for their own instruments.</summary>
    public const string PluginMeterName = "InterpMesh.Plugins";

    private readonly Meter meter;
    private readonly Meter pluginMeter;

    /// <param name="meters">The host's meter factory: two workers in one process (tests) do not mix their series.</param>
    public WorkerMetrics(IMeterFactory meters)
    {
        meter = meters.Create(MeterName);
        pluginMeter = meters.Create(PluginMeterName);
        Requests = meter.CreateCounter<long>("interpmesh.worker.requests", "{request}", "gRPC calls handled (health checks), by method and status");
        Duration = meter.CreateHistogram<double>("interpmesh.worker.request.duration", "s", "gRPC call latency, by method and status");
        PluginRuns = meter.CreateCounter<long>("interpmesh.worker.plugin.runs", "{run}", "Finished plugin runs, by plugin and outcome");
    }

    public Counter<long> Requests { get; }
    public Histogram<double> Duration { get; }
    public Counter<long> PluginRuns { get; }

    /// <summary>The plugin meter handed to runs (exported with the worker's).</summary>
    public Meter PluginMeter => pluginMeter;

    /// <summary>Plugin folders loaded and failed in this worker.</summary>
    public void ObservePlugins(Func<int> loaded, Func<int> failed)
    {
        meter.CreateObservableGauge("interpmesh.worker.plugins.loaded", loaded, "{plugin}", "Plugins loaded and runnable in this worker");
        meter.CreateObservableGauge("interpmesh.worker.plugins.failed", failed, "{plugin}", "Plugin folders that failed to load in this worker");
    }

    /// <summary>Jobs queued in the store (over every gateway and worker: what an autoscaler of workers reads) and running in this worker.</summary>
    public void ObserveJobs(Func<long> queued, Func<int> running)
    {
        meter.CreateObservableGauge(QueuedGauge, queued, "{job}", "Jobs waiting in the shared job store");
        meter.CreateObservableGauge("interpmesh.worker.jobs.running", running, "{job}", "Jobs running in this worker");
    }

    public void Dispose()
    {
        meter.Dispose();
        pluginMeter.Dispose();
    }
}
