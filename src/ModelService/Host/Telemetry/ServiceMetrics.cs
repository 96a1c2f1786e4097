using System.Diagnostics.Metrics;
using InterpMesh.ServiceDefaults;

namespace InterpMesh.ModelService.Telemetry;

/// <summary>
/// The ModelService's instruments (meter <c>InterpMesh.ModelService</c>), exported to Prometheus on
/// the metrics port. Tags are low-cardinality only: never prompts, hooks or request ids.
/// </summary>
public sealed class ServiceMetrics : ICallMetrics, IDisposable
{
    public const string MeterName = "InterpMesh.ModelService";

    private readonly Meter meter = new(MeterName);

    public ServiceMetrics()
    {
        Requests = meter.CreateCounter<long>("interpmesh.requests", "{request}", "Requests handled, by method and status");
        Duration = meter.CreateHistogram("interpmesh.request.duration", "s", "Request latency, by method and status",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] });
        Tokens = meter.CreateCounter<long>("interpmesh.tokens", "{token}", "Tokens processed (inputs of Run, prompt and generated tokens of Generate)");
        ActivationBytes = meter.CreateCounter<long>("interpmesh.activations.bytes", "By", "Activation bytes streamed to clients");
        BatchSize = meter.CreateHistogram("interpmesh.batch.size", "{sequence}", "Sequences per forward",
            advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = [1, 2, 4, 8, 16, 32, 64] });
        WorkerBusy = meter.CreateCounter<double>("interpmesh.worker.busy", "s", "Time the torch worker spent running requests");
        meter.CreateObservableGauge("interpmesh.tensors.live", () => TorchSharp.torch.Tensor.TotalCount, "{tensor}",
            "TorchSharp tensors alive in the process: flat under steady load, growth means a leak");
    }

    public Counter<long> Requests { get; }
    public Histogram<double> Duration { get; }
    public Counter<long> Tokens { get; }
    public Counter<long> ActivationBytes { get; }
    public Histogram<int> BatchSize { get; }
    public Counter<double> WorkerBusy { get; }

    /// <summary>Registers the queue-depth gauge (requests admitted and not yet finished).</summary>
    public void ObserveQueue(Func<int> depth) =>
        meter.CreateObservableGauge("interpmesh.queue.depth", depth, "{request}", "Requests admitted and not yet finished");

    public void Dispose() => meter.Dispose();
}
