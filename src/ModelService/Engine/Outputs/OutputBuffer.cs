using System.Runtime.CompilerServices;
using System.Threading.Channels;
using InterpMesh.Runtime;

namespace InterpMesh.Engine.Outputs;

/// <summary>
/// One request's outputs between the torch thread and the request's reader. The torch thread only
/// appends and moves on — it never waits for a reader. The buffer counts the bytes it holds: the
/// scheduler pauses a generation whose unread bytes pass <see cref="PauseBytes"/>, and a reader that
/// takes nothing for the stall time while output waits ends the request with
/// <see cref="RequestLimitException"/> (its bytes are dropped, the memory comes back).
/// </summary>
public sealed class OutputBuffer : IDisposable
{
    private readonly Channel<EngineOutput> channel = Channel.CreateUnbounded<EngineOutput>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly CancellationTokenSource aborted = new();
    private readonly TimeSpan stallTimeout;
    private Timer? watchdog;
    private int disposed;
    private long buffered;
    private long lastProgress = Environment.TickCount64;
    private Exception? failure;

    public OutputBuffer(long pauseBytes, TimeSpan stallTimeout)
    {
        PauseBytes = pauseBytes;
        this.stallTimeout = stallTimeout;
    }

    /// <summary>Unread bytes above which a generation pauses.</summary>
    public long PauseBytes { get; }

    /// <summary>Bytes written and not yet taken by the reader.</summary>
    public long BufferedBytes => Interlocked.Read(ref buffered);

    /// <summary>Whether the reader has fallen behind (the scheduler pauses the request).</summary>
    public bool ReaderBehind => BufferedBytes > PauseBytes;

    /// <summary>Set when the request was ended by the buffer (stalled reader); the reader's pending write should stop.</summary>
    public CancellationToken Aborted => aborted.Token;

    /// <summary>Why the request ended early, if it did.</summary>
    public Exception? Failure => Volatile.Read(ref failure);

    /// <summary>Appends an output; never blocks. Ignored after the request ended.</summary>
    public void Write(EngineOutput output)
    {
        if (Failure is not null)
            return;
        if (watchdog is null)
        {
            // Started with the first output, so a request that is never run holds no timer. The reader
            // may have left (and disposed the buffer) meanwhile: then the new timer goes at once.
            var period = TimeSpan.FromMilliseconds(Math.Clamp(stallTimeout.TotalMilliseconds / 4, 10, 1000));
            var timer = new Timer(_ => CheckStall(), null, period, period);
            Interlocked.Exchange(ref watchdog, timer);
            if (Volatile.Read(ref disposed) == 1)
                timer.Dispose();
        }
        if (BufferedBytes == 0)
            Interlocked.Exchange(ref lastProgress, Environment.TickCount64);
        Interlocked.Add(ref buffered, output.Bytes);
        channel.Writer.TryWrite(output);
    }

    /// <summary>No more outputs; with an exception, the reader receives it after what was written.</summary>
    public void Complete(Exception? error = null) => channel.Writer.TryComplete(error);

    /// <summary>Ends the request now: the reader gets <paramref name="error"/> and unread outputs are dropped.</summary>
    public void Fail(Exception error)
    {
        if (Interlocked.CompareExchange(ref failure, error, null) is not null)
            return;
        // Unread outputs are dropped by the reader (it stops at the failure), not here: the channel
        // has a single reader.
        channel.Writer.TryComplete(error);
        try
        {
            aborted.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Reads outputs in order until the request completes (or fails, which throws).</summary>
    public async IAsyncEnumerable<EngineOutput> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            if (Failure is { } failed)
                throw failed;
            if (channel.Reader.TryRead(out var output))
            {
                Interlocked.Add(ref buffered, -output.Bytes);
                Interlocked.Exchange(ref lastProgress, Environment.TickCount64);
                yield return output;
                continue;
            }
            if (!await channel.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
                break;
        }
        if (Failure is { } error)
            throw error;
    }

    private void CheckStall()
    {
        if (Failure is not null || channel.Reader.Completion.IsCompleted && BufferedBytes == 0)
            return;
        if (BufferedBytes > 0 && Environment.TickCount64 - Interlocked.Read(ref lastProgress) > stallTimeout.TotalMilliseconds)
        {
            Fail(new RequestLimitException(
                $"the client read none of this request's output for {stallTimeout.TotalSeconds:0.#} s while {BufferedBytes:N0} bytes waited " +
                $"(output buffer limit {PauseBytes:N0} bytes); the request was ended — read the stream continuously, or capture less per request"));
        }
    }

    public void Dispose()
    {
        Interlocked.Exchange(ref disposed, 1);
        Volatile.Read(ref watchdog)?.Dispose();
    }
}
