namespace InterpMesh.Engine;

/// <summary>Limits and scheduling settings of a <see cref="ModelEngine"/> (hosts bind them from configuration).</summary>
public sealed class EngineOptions
{
    /// <summary>Largest batch (inputs or prompts) one request may carry.</summary>
    public int MaxBatch { get; init; } = 64;

    /// <summary>Most rows one Run forward may carry when concurrent Runs are merged.</summary>
    public int BatchMaxRows { get; init; } = 64;

    /// <summary>How long the oldest queued Run waits for compatible company when nothing else is running (ms).</summary>
    public int BatchWindowMs { get; init; } = 2;

    /// <summary>Most generation rows decoded together (all running Generates' prompts).</summary>
    public int MaxDecodeRows { get; init; } = 64;

    /// <summary>Largest total capture one request may ask for (bytes); also bounds what one forward writes to its buffer.</summary>
    public long MaxCaptureBytes { get; init; } = 1L << 30;

    /// <summary>
    /// Bytes of capture buffers kept for reuse once sent (<see cref="Outputs.HostBufferPool"/>): a fresh
    /// buffer costs its page mapping, which dominated streaming captures on the VMs measured. 0 keeps none.
    /// </summary>
    public long CapturePoolBytes { get; init; } = 512L << 20;

    /// <summary>A Generate whose unread output exceeds this pauses (leaves the decode batch) until its reader catches up.</summary>
    public long OutputBufferBytes { get; init; } = 64L << 20;

    /// <summary>A request whose reader takes nothing for this long while output waits is ended with RESOURCE_EXHAUSTED.</summary>
    public TimeSpan StallTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Requests admitted (queued or running) at once; beyond it, and after <see cref="AdmissionWait"/>, requests are refused.</summary>
    public int MaxConcurrentRequests { get; init; } = 32;

    /// <summary>How long a request waits for an admission slot, in arrival order, before it is refused.</summary>
    public TimeSpan AdmissionWait { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// Largest estimated autograd memory (activations saved for the backward pass) one gradient
    /// request may need, in bytes; 0 disables gradient requests.
    /// </summary>
    public long GradientMemoryBytes { get; init; } = 1L << 30;

    /// <summary>
    /// Patching sweeps (a Run of identical inputs whose rows are patched from some position on) run
    /// the shared prefix once and each row only from its first patched position, reusing the
    /// prefix's KV cache; results equal the plain forward's within float rounding.
    /// </summary>
    public bool PrefixReuse { get; init; } = true;
}

/// <summary>What the engine reports about its work; hosts forward it to their metrics.</summary>
public interface IEngineObserver
{
    /// <summary>A forward ran: <paramref name="rows"/> sequences, <paramref name="tokens"/> new tokens, <paramref name="seconds"/> of torch time.</summary>
    void Forward(int rows, int tokens, double seconds);

    /// <summary>
    /// The torch thread caught a failure outside any one request's forward; every request in flight
    /// was ended with it and the engine serves on. Called on the torch thread.
    /// </summary>
    void Failed(Exception error)
    {
    }
}

internal sealed class NoObserver : IEngineObserver
{
    public static readonly NoObserver Instance = new();
    public void Forward(int rows, int tokens, double seconds) { }
}
