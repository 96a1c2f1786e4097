using System.Diagnostics;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Engine.Scheduling;

/// <summary>An admitted request: its buffer, cancellation, receipts and the tensors it owns.</summary>
internal abstract class Work
{
    // Cancelled when the caller cancels or stops reading; owned by the work and disposed by Finish
    // (torch thread) — the caller's Leave and Finish may race, hence the lock.
    private readonly CancellationTokenSource lifetime;
    private readonly List<Tensor> owned;
    private readonly Lock gate = new();
    private bool disposed;

    protected Work(OutputBuffer buffer, HookPlan plan, List<Tensor> owned, CancellationToken cancellation)
    {
        lifetime = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        Cancellation = lifetime.Token;
        Buffer = buffer;
        Plan = plan;
        Receipts = new InterventionReceipts(plan);
        this.owned = owned;
    }

    public OutputBuffer Buffer { get; }
    public CancellationToken Cancellation { get; }
    public HookPlan Plan { get; }
    public InterventionReceipts Receipts { get; }
    public ActivityContext Trace { get; } = Activity.Current?.Context ?? default;
    public long Arrived { get; } = Stopwatch.GetTimestamp();

    /// <summary>Whether the request is over for the scheduler: cancelled by its client or ended by its buffer.</summary>
    public bool Gone => Cancellation.IsCancellationRequested || Buffer.Failure is not null;

    private int finished;

    /// <summary>Whether <see cref="Finish"/> ran (the reader has been told how the request ended).</summary>
    public bool Finished => Volatile.Read(ref finished) == 1;

    /// <summary>The caller is done with the request (finished reading, cancelled, or gave up).</summary>
    public void Leave()
    {
        lock (gate)
        {
            if (!disposed)
                lifetime.Cancel();
        }
    }

    /// <summary>Ends the request (once): completes the buffer and frees what it owns. Torch thread.</summary>
    public void Finish(Exception? error = null)
    {
        if (Interlocked.Exchange(ref finished, 1) == 1)
            return;
        if (error is null && Cancellation.IsCancellationRequested)
            error = new OperationCanceledException(Cancellation);
        Buffer.Complete(error);
        foreach (var t in owned)
            t.Dispose();
        lock (gate)
        {
            disposed = true;
            lifetime.Dispose();
        }
        Release();
    }

    /// <summary>Frees scheduler resources (slots, generators).</summary>
    protected virtual void Release() { }
}

internal sealed class RunWork(ValidatedRun run, OutputBuffer buffer, CancellationToken cancellation)
    : Work(buffer, run.Plan, run.Owned, cancellation)
{
    public ValidatedRun Run { get; } = run;
}

internal sealed class GenerateWork(ValidatedGenerate generate, OutputBuffer buffer, CancellationToken cancellation)
    : Work(buffer, generate.Plan, generate.Owned, cancellation)
{
    public ValidatedGenerate Generate { get; } = generate;
    public int Rows => Generate.Prompts.Length;

    /// <summary>First row of this request in the decode cache (valid while it holds slots).</summary>
    public int Slot { get; set; } = -1;

    /// <summary>Steps emitted so far; the next step's index.</summary>
    public int Step { get; set; }

    public bool[] Stopped { get; } = new bool[generate.Prompts.Length];

    /// <summary>The last id per row: the next decode step's input.</summary>
    public long[] Last { get; set; } = [];

    public torch.Generator? Sampler { get; set; }

    /// <summary>When the request paused because its reader fell behind (null while running).</summary>
    public long? PausedSince { get; set; }

    protected override void Release()
    {
        Sampler?.Dispose();
        Sampler = null;
    }
}
