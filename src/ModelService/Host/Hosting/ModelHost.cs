using InterpMesh.Engine;
using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Telemetry;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Hosting;

/// <summary>
/// Owns the one model of this process and the <see cref="ModelEngine"/> that serves it. The model
/// loads in the background after start; until then health reports NOT_SERVING and requests get
/// UNAVAILABLE.
/// </summary>
public sealed class ModelHost : BackgroundService, IHealthCheck
{
    private readonly ModelServiceOptions options;
    private readonly ILogger<ModelHost> logger;
    private readonly ServiceMetrics metrics;
    private ModelEngine? engine;
    private int disposed;
    private readonly TaskCompletionSource<LoadedModel> loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ModelHost(IOptions<ModelServiceOptions> options, ILogger<ModelHost> logger, ServiceMetrics metrics)
    {
        this.options = options.Value;
        this.logger = logger;
        this.metrics = metrics;
        TorchRuntime.Initialize(this.options.Threads > 0 ? this.options.Threads : null);
        Worker = new TorchWorker(workers: 1, queueCapacity: 4);
    }

    /// <summary>Loads and disposes the model (the engine has its own torch thread for requests).</summary>
    public TorchWorker Worker { get; }

    /// <summary>The engine serving the model, or null while it is loading (or failed to load).</summary>
    public ModelEngine? Engine => Volatile.Read(ref engine);

    public ModelServiceOptions Options => options;

    /// <summary>The model, or null while it is loading (or failed to load).</summary>
    public LoadedModel? Model => loaded.Task.IsCompletedSuccessfully ? loaded.Task.Result : null;

    /// <summary>Why loading failed, if it did.</summary>
    public Exception? LoadError => loaded.Task.Exception?.InnerException;

    /// <summary>Waits for the model (tests and hosts that want to block until ready).</summary>
    public Task<LoadedModel> WhenLoaded => loaded.Task;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // Validated at start (ModelServiceOptionsValidator), so the name parses.
        var dtype = DTypeNames.TryParse(options.DType, out var parsed) ? parsed : ScalarType.Float32;
        try
        {
            var model = await Worker.RunAsync(() => ModelLoader.Load(options.ModelPath, options.TokenizerPath, dtype, options.Device), stoppingToken);
            var c = model.Config;
            if (logger.IsEnabled(LogLevel.Information))
                logger.LogInformation("Loaded {Architecture} from {Source}: {Layers} layers, d_model {DModel}; {Threads} torch threads, MKL CPU dispatch {MklDispatch}", c.Architecture, model.Source, c.NLayers, c.DModel, get_num_threads(), TorchRuntime.MklCpuDispatch);
            Volatile.Write(ref engine, new ModelEngine(model, options.ToEngineOptions(), new EngineMetrics(metrics, logger)));
            loaded.TrySetResult(model);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            logger.LogError(e, "Loading the model failed: {Message}", e.Message);
            loaded.TrySetException(e);
        }
    }

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(Model is not null ? HealthCheckResult.Healthy("model loaded")
            : LoadError is not null ? HealthCheckResult.Unhealthy($"model failed to load: {LoadError.Message}")
            : HealthCheckResult.Unhealthy("model is loading"));

    public override void Dispose()
    {
        // Registered both as a singleton and as the hosted service: the container disposes it twice.
        if (Interlocked.Exchange(ref disposed, 1) == 1)
            return;
        engine?.Dispose();
        if (Model is { } model)
        {
            Worker.Run(() =>
            {
                model.Dispose();
                return 0;
            });
        }
        Worker.Dispose();
        base.Dispose();
    }
}

/// <summary>Forwards the engine's reports to the service's Prometheus instruments (and its failures to the log).</summary>
internal sealed class EngineMetrics(ServiceMetrics metrics, ILogger logger) : IEngineObserver
{
    public void Failed(Exception error) =>
        logger.LogError(error, "The engine ended every request in flight after an unexpected failure, and serves on: {Message}", error.Message);

    public void Forward(int rows, int tokens, double seconds)
    {
        metrics.BatchSize.Record(rows);
        metrics.Tokens.Add(tokens);
        metrics.WorkerBusy.Add(seconds);
    }
}
