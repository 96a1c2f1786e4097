using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;
using InterpMesh.Gateway.Security;
using InterpMesh.ServiceDefaults;

namespace InterpMesh.Gateway.Telemetry;

/// <summary>
/// The gateway's instruments (meter <c>InterpMesh.Gateway</c>), exported to Prometheus on the
/// metrics port. Tags are low-cardinality: method, status, key name (never the key). Plugin runs and
/// the plugins' own meter are the analysis workers' (<c>InterpMesh.Worker</c>, <c>InterpMesh.Plugins</c>).
/// </summary>
public sealed class GatewayMetrics : ICallMetrics, IDisposable
{
    public const string MeterName = "InterpMesh.Gateway";

    private readonly Meter meter;

    /// <param name="meters">The host's meter factory: meters it creates belong to this host, so two gateways in one process (tests) do not mix their series.</param>
    public GatewayMetrics(IMeterFactory meters)
    {
        meter = meters.Create(MeterName);
        Requests = meter.CreateCounter<long>("interpmesh.gateway.requests", "{request}", "Calls handled, by method, status and key name");
        Duration = meter.CreateHistogram("interpmesh.gateway.request.duration", "s", "Call latency, by method, status and key name",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600] });
        ActivationBytes = meter.CreateCounter<long>("interpmesh.gateway.activations.bytes", "By", "Response bytes (gRPC messages with their prefixes) forwarded from model services to clients");
    }

    public Counter<long> Requests { get; }
    public Histogram<double> Duration { get; }
    public Counter<long> ActivationBytes { get; }
    /// <summary>Plugin folders loaded and failed as the analysis workers published them (the gateway's last read of the catalog).</summary>
    public void ObservePlugins(Func<int> loaded, Func<int> failed)
    {
        meter.CreateObservableGauge("interpmesh.gateway.plugins.loaded", loaded, "{plugin}", "Plugins some analysis worker has loaded and runs");
        meter.CreateObservableGauge("interpmesh.gateway.plugins.failed", failed, "{plugin}", "Plugin folders analysis workers failed to load (and none loaded)");
    }

    /// <summary>Jobs queued and running in the job store, over every gateway and worker (workers export the queued count too, as <c>interpmesh.jobs.queued</c>).</summary>
    /// <summary>Gateways sharing the job store (and so each key's rate limit), as this one last counted them.</summary>
    public void ObserveReplicas(Func<int> replicas) =>
        meter.CreateObservableGauge("interpmesh.gateway.replicas", replicas, "{gateway}", "Gateways sharing the job store and each key's rate limit");

    public void ObserveJobs(Func<long> queued, Func<long> running)
    {
        meter.CreateObservableGauge("interpmesh.jobs.queued", queued, "{job}", "Jobs waiting in the shared job store");
        meter.CreateObservableGauge("interpmesh.jobs.running", running, "{job}", "Jobs running on analysis workers");
    }

    /// <summary>Every key's job totals from the job store (over all workers, surviving pruning), as counters tagged with the key's name.</summary>
    public void ObserveKeyUsage(Func<IReadOnlyList<InterpMesh.Jobs.KeyUsage>> usage)
    {
        static KeyValuePair<string, object?> Key(InterpMesh.Jobs.KeyUsage u) => new("key", u.Owner);
        meter.CreateObservableCounter("interpmesh.jobs.key.submitted", () => usage().Select(u => new Measurement<long>(u.JobsSubmitted, Key(u))), "{job}", "Jobs submitted, by key");
        meter.CreateObservableCounter("interpmesh.jobs.key.model_calls", () => usage().Select(u => new Measurement<long>(u.Usage.ModelCalls, Key(u))), "{call}", "Model calls made by the key's jobs");
        meter.CreateObservableCounter("interpmesh.jobs.key.tokens", () => usage().Select(u => new Measurement<long>(u.Usage.Tokens, Key(u))), "{token}", "Tokens the models ran for the key's jobs (prompt and generated)");
        meter.CreateObservableCounter("interpmesh.jobs.key.model_time", () => usage().Select(u => new Measurement<double>(u.Usage.ModelTime.TotalSeconds, Key(u))), "s", "Time the key's jobs spent in model calls");
    }

    /// <summary>Calls are also tagged with the caller's key name (never the key).</summary>
    public void AddTags(ref TagList tags, ServerCallContext context) => tags.Add("key", Caller.NameOf(context));

    public void Dispose() => meter.Dispose();
}
