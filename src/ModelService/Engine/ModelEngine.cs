using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Engine.Scheduling;
using InterpMesh.Runtime;
using InterpMesh.Runtime.Loading;

namespace InterpMesh.Engine;

/// <summary>The engine is stopping (its host is shutting down): the request did not complete; retry elsewhere.</summary>
public sealed class EngineStoppedException() : Exception("the model service is shutting down; the request did not complete — retry it (another replica will serve it)");

/// <summary>Refused at admission: the engine is running its maximum of requests. Retry after <see cref="RetryAfterMs"/>.</summary>
public sealed class EngineBusyException(string message, int retryAfterMs) : RequestLimitException(message)
{
    public int RetryAfterMs { get; } = retryAfterMs;
}

/// <summary>
/// The serving core of one model: validates <see cref="RunSpec"/>s and <see cref="GenerateSpec"/>s
/// once, admits them, and runs them on one torch thread that works in forward steps — batched Runs,
/// prefills and continuously batched decode steps interleave, so no request waits for a whole
/// generation. Outputs go to a per-request <see cref="OutputBuffer"/>; the torch thread never
/// waits for a reader. Hosts (the gRPC endpoint, the CLI, an in-process client) only map their
/// types to specs and outputs back.
/// </summary>
public sealed class ModelEngine : IDisposable
{
    private readonly ConcurrentQueue<Work> incoming = new();
    private readonly SemaphoreSlim signal = new(0);
    private readonly SemaphoreSlim admission;
    private readonly Scheduler scheduler;
    private readonly Thread thread;
    // Taken to enqueue and to stop, so no request is enqueued after the torch thread's last drain.
    private readonly Lock entry = new();
    private readonly IEngineObserver observer;
    private volatile bool stopping;

    public ModelEngine(LoadedModel model, EngineOptions options, IEngineObserver? observer = null)
    {
        Model = model;
        Options = options;
        admission = new SemaphoreSlim(options.MaxConcurrentRequests);
        this.observer = observer ?? NoObserver.Instance;
        CapturePool = new HostBufferPool(options.CapturePoolBytes);
        scheduler = new Scheduler(model, options, this.observer, CapturePool);
        thread = new Thread(Loop) { IsBackground = true, Name = "torch-engine" };
        thread.Start();
    }

    public LoadedModel Model { get; }
    public EngineOptions Options { get; }

    /// <summary>Where captures' buffers come from; a reader gives one back with <see cref="CaptureOutput.Release"/> once it has sent the bytes.</summary>
    public HostBufferPool CapturePool { get; }

    /// <summary>Requests admitted and not yet finished.</summary>
    public int Admitted => Options.MaxConcurrentRequests - admission.CurrentCount;

    /// <summary>
    /// Runs one forward. Yields each capture (whole) as its stage completes, then one <see cref="RunOutcome"/>.
    /// Throws <see cref="InvalidRequestException"/> for a bad spec, <see cref="RequestLimitException"/> over a
    /// limit (including a reader that stalls), <see cref="OperationCanceledException"/> when cancelled.
    /// </summary>
    public IAsyncEnumerable<EngineOutput> RunAsync(RunSpec spec, CancellationToken cancellationToken = default) =>
        Submit(spec).ReadAllAsync(cancellationToken);

    /// <summary>
    /// Generates. Yields, per step, that step's captures and then a <see cref="GenerateStep"/>; the last step
    /// is marked <see cref="GenerateStep.Final"/> and carries the intervention receipts.
    /// </summary>
    public IAsyncEnumerable<EngineOutput> GenerateAsync(GenerateSpec spec, CancellationToken cancellationToken = default) =>
        Submit(spec).ReadAllAsync(cancellationToken);

    /// <summary>Validates a Run now (throwing its errors) and returns it, to be read once.</summary>
    public EngineRequest Submit(RunSpec spec)
    {
        var validated = RequestValidator.Run(Model, Options, spec);
        return new EngineRequest(this, (buffer, ct) => new RunWork(validated, buffer, ct), validated.Owned);
    }

    /// <summary>Validates a Generate now (throwing its errors) and returns it, to be read once.</summary>
    public EngineRequest Submit(GenerateSpec spec)
    {
        var validated = RequestValidator.Generate(Model, Options, spec);
        return new EngineRequest(this, (buffer, ct) => new GenerateWork(validated, buffer, ct), validated.Owned);
    }

    internal async IAsyncEnumerable<EngineOutput> Serve(Func<OutputBuffer, CancellationToken, Work> create, OutputBuffer buffer, List<TorchSharp.torch.Tensor> owned, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        bool admitted = false;
        try
        {
            admitted = await admission.WaitAsync(Options.AdmissionWait, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (!admitted)
            {
                owned.ForEach(t => t.Dispose());
                buffer.Dispose();
            }
        }
        if (!admitted)
        {
            throw new EngineBusyException(
                $"the server is running its maximum of {Options.MaxConcurrentRequests} requests; retry after a short delay", 200);
        }
        // The request ends for the scheduler when its caller cancels or stops reading early.
        var work = create(buffer, cancellationToken);
        try
        {
            lock (entry)
            {
                if (stopping)
                {
                    // Never seen by the torch thread: end it here (frees what it owns).
                    work.Finish(new EngineStoppedException());
                    throw new EngineStoppedException();
                }
                incoming.Enqueue(work);
            }
            signal.Release();
            await foreach (var output in buffer.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return output;
        }
        finally
        {
            work.Leave();
            signal.Release();
            admission.Release();
            buffer.Dispose();
        }
    }

    /// <summary>
    /// The torch thread. It must outlive every failure: if it ended, every request admitted after
    /// that would wait forever. A failure outside any one request's forward (a bug, or the device out
    /// of memory while rearranging the cache) ends every request in flight with it, and serving goes on.
    /// </summary>
    private void Loop()
    {
        using var mode = TorchSharp.torch.inference_mode();
        while (!stopping)
        {
            try
            {
                Drain();
                var wait = scheduler.Iterate(Drain, timeout => signal.Wait(timeout));
                if (wait is { } timeout)
                    signal.Wait(timeout);
            }
            catch (Exception e)
            {
                Failed(e);
                scheduler.FailAll(e);
            }
        }
        try
        {
            Drain();
        }
        finally
        {
            scheduler.Shutdown();
        }
    }

    private void Drain()
    {
        while (incoming.TryDequeue(out var work))
            scheduler.Add(work);
    }

    private void Failed(Exception error)
    {
        try
        {
            observer.Failed(error);
        }
        catch (Exception)
        {
            // An observer that fails cannot stop the engine.
        }
    }

    public void Dispose()
    {
        lock (entry)
        {
            if (stopping)
                return;
            stopping = true;
        }
        signal.Release();
        thread.Join();
        CapturePool.Dispose();
        // The semaphores stay undisposed: a request's reader may still be leaving (releasing both).
    }
}

/// <summary>
/// A validated request, read once with <see cref="ReadAllAsync"/> (admission happens then). A host
/// writing its outputs to a network peer watches <see cref="Aborted"/>: it fires when the engine ends
/// the request because its reader stalled, with the reason in <see cref="Failure"/>.
/// </summary>
public sealed class EngineRequest
{
    private readonly ModelEngine engine;
    private readonly Func<OutputBuffer, CancellationToken, Work> create;
    private readonly List<TorchSharp.torch.Tensor> owned;
    private readonly OutputBuffer buffer;
    private int read;

    internal EngineRequest(ModelEngine engine, Func<OutputBuffer, CancellationToken, Work> create, List<TorchSharp.torch.Tensor> owned)
    {
        this.engine = engine;
        this.create = create;
        this.owned = owned;
        buffer = new OutputBuffer(engine.Options.OutputBufferBytes, engine.Options.StallTimeout);
    }

    public CancellationToken Aborted => buffer.Aborted;
    public Exception? Failure => buffer.Failure;

    public IAsyncEnumerable<EngineOutput> ReadAllAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref read, 1) == 1)
            throw new InvalidOperationException("an engine request is read once");
        return engine.Serve(create, buffer, owned, cancellationToken);
    }
}
