using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Engine.Outputs;

/// <summary>A tensor copied off the device into managed memory: dtype, shape and raw little-endian bytes.</summary>
public sealed class HostTensor
{
    private byte[]? data;
    private readonly HostBufferPool? pool;

    public HostTensor(ScalarType dtype, long[] shape, byte[] data)
        : this(dtype, shape, data, null)
    {
    }

    private HostTensor(ScalarType dtype, long[] shape, byte[] data, HostBufferPool? pool)
    {
        DType = dtype;
        Shape = shape;
        this.data = data;
        this.pool = pool;
        Length = data.Length;
    }

    public ScalarType DType { get; }
    public long[] Shape { get; }

    /// <summary>Bytes of data (still known after <see cref="Release"/>).</summary>
    public int Length { get; }

    /// <summary>The bytes; gone once <see cref="Release"/> has given them back to their pool.</summary>
    public byte[] Data => data ?? throw new ObjectDisposedException(nameof(HostTensor), "this tensor's buffer was given back to its pool after it was sent");

    /// <summary>Copies a tensor (any device, any layout) to managed memory, into a buffer from <paramref name="pool"/> when one is given.</summary>
    public static HostTensor From(Tensor t, HostBufferPool? pool = null)
    {
        using var c = t.detach().cpu().contiguous();
        int length = checked((int)(c.numel() * c.ElementSize));
        var bytes = pool is null ? GC.AllocateUninitializedArray<byte>(length) : pool.Rent(length);
        c.bytes.CopyTo(bytes);
        return new HostTensor(c.dtype, c.shape, bytes, pool);
    }

    /// <summary>
    /// Gives the buffer back to the pool it came from (nothing for a tensor without one). Only the
    /// one consumer of the tensor may call it, once it has finished with the bytes (sent them).
    /// </summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref data, null) is { } bytes)
            pool?.Return(bytes);
    }

    /// <summary>A CPU tensor with these values; the caller owns it.</summary>
    public Tensor ToTensor()
    {
        var t = empty(Shape, DType);
        Data.AsSpan().CopyTo(t.bytes);
        return t;
    }
}

/// <summary>Something a request's consumer receives, in order.</summary>
public abstract class EngineOutput
{
    /// <summary>Bytes this output holds in its request's buffer.</summary>
    public abstract long Bytes { get; }
}

/// <summary>A captured activation (whole, not chunked), or a gradient. <see cref="Step"/> is 0 for Run.</summary>
public sealed class CaptureOutput(string hook, int step, HostTensor value, bool gradient = false) : EngineOutput
{
    public string Hook { get; } = hook;
    public int Step { get; } = step;
    public HostTensor Value { get; } = value;
    /// <summary>True: d metric / d activation at <see cref="Hook"/> (a gradient request), not the activation.</summary>
    public bool Gradient { get; } = gradient;
    public override long Bytes => Value.Length;

    /// <summary>Gives the capture's buffer back for reuse: its reader calls this once the bytes were sent, and reads nothing of it after.</summary>
    public void Release() => Value.Release();
}

/// <summary>The end of a Run: the padded tokens actually run, logits or top-k, loss, receipts.</summary>
public sealed class RunOutcome : EngineOutput
{
    /// <summary>[batch, pos] int64.</summary>
    public required HostTensor Tokens { get; init; }
    /// <summary>[batch, pos] int64 0/1.</summary>
    public required HostTensor AttentionMask { get; init; }
    /// <summary>Float32 logits when requested without top-k.</summary>
    public HostTensor? Logits { get; init; }
    public HostTensor? TopKIds { get; init; }
    public HostTensor? TopKValues { get; init; }
    public double? Loss { get; init; }
    /// <summary>Rows in the forward that served this request (more than its own when batched with others).</summary>
    public int ForwardBatchSize { get; init; }
    public IReadOnlyList<InterventionReceipt> Receipts { get; init; } = [];
    /// <summary>A gradient request's metric summed over rows (null without one).</summary>
    public double? Metric { get; init; }
    /// <summary>A gradient request's metric per row (empty without one).</summary>
    public IReadOnlyList<double> RowMetrics { get; init; } = [];
    public override long Bytes => Tokens.Data.Length + AttentionMask.Data.Length + (Logits?.Data.Length ?? 0)
        + (TopKIds?.Data.Length ?? 0) + (TopKValues?.Data.Length ?? 0);
}

/// <summary>One generation step: the id chosen per prompt (-1 for prompts that already stopped).</summary>
public sealed class GenerateStep : EngineOutput
{
    public required int Step { get; init; }
    public required int[] Ids { get; init; }
    /// <summary>On step 0: the prompt ids actually used.</summary>
    public IReadOnlyList<int[]>? PromptTokens { get; init; }
    /// <summary>Set on the last step, with the request's receipts.</summary>
    public bool Final { get; init; }
    public IReadOnlyList<InterventionReceipt> Receipts { get; init; } = [];
    /// <summary>Rows in the forward that produced this step (other requests' rows included).</summary>
    public int ForwardRows { get; init; }
    public override long Bytes => Ids.Length * 4L;
}
