namespace InterpMesh.Engine.Outputs;

/// <summary>
/// Managed buffers for captures, kept for reuse once their bytes have been sent. A capture copied off
/// the device into a fresh array pays for the operating system mapping its pages in (on the VMs
/// measured, that made the copy run at under 1 GB/s instead of over 10); the same shapes recur from
/// request to request, so a buffer of the exact length is usually free again by the next one.
/// <para>
/// Buffers are kept by exact length, up to <see cref="Capacity"/> bytes in all; beyond that a returned
/// buffer is left to the garbage collector. Everything kept is let go after a minute without a rent.
/// Only a consumer that knows nobody else holds a buffer gives it back (<see cref="CaptureOutput.Release"/>);
/// a buffer never given back is simply collected.
/// </para>
/// </summary>
public sealed class HostBufferPool : IDisposable
{
    /// <summary>Buffers shorter than this come from the allocator every time (small ones are cheap to map).</summary>
    public const int MinPooledBytes = 64 << 10;

    private static readonly TimeSpan IdleTrim = TimeSpan.FromMinutes(1);

    private readonly Dictionary<int, Stack<byte[]>> free = [];
    private readonly Timer? trim;
    private long held;
    private long reused;
    private bool rented;

    /// <param name="capacity">Most bytes kept for reuse; 0 keeps nothing.</param>
    public HostBufferPool(long capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacity);
        Capacity = capacity;
        if (capacity > 0)
            trim = new Timer(_ => TrimIfIdle(), null, IdleTrim, IdleTrim);
    }

    /// <summary>Most bytes kept for reuse.</summary>
    public long Capacity { get; }

    /// <summary>Rents served with a kept buffer since the pool was made.</summary>
    public long Reused => Interlocked.Read(ref reused);

    /// <summary>Bytes kept for reuse right now.</summary>
    public long HeldBytes
    {
        get
        {
            lock (free)
                return held;
        }
    }

    /// <summary>A buffer of exactly <paramref name="length"/> bytes (contents undefined).</summary>
    public byte[] Rent(int length)
    {
        if (length >= MinPooledBytes && Capacity > 0)
        {
            lock (free)
            {
                rented = true;
                if (free.TryGetValue(length, out var stack) && stack.TryPop(out var kept))
                {
                    held -= length;
                    reused++;
                    return kept;
                }
            }
        }
        return GC.AllocateUninitializedArray<byte>(length);
    }

    /// <summary>Keeps <paramref name="buffer"/> for a later <see cref="Rent"/>; the caller must not touch it again.</summary>
    public void Return(byte[] buffer)
    {
        if (buffer.Length < MinPooledBytes || Capacity == 0)
            return;
        lock (free)
        {
            if (held + buffer.Length > Capacity)
                return;
            if (!free.TryGetValue(buffer.Length, out var stack))
                free[buffer.Length] = stack = new Stack<byte[]>();
            stack.Push(buffer);
            held += buffer.Length;
        }
    }

    /// <summary>Lets go of every kept buffer.</summary>
    public void Clear()
    {
        lock (free)
        {
            free.Clear();
            held = 0;
        }
    }

    private void TrimIfIdle()
    {
        lock (free)
        {
            if (!rented)
            {
                free.Clear();
                held = 0;
            }
            rented = false;
        }
    }

    public void Dispose()
    {
        trim?.Dispose();
        Clear();
    }
}
