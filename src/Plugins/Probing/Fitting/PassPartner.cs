using System.Diagnostics;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// A second thread for the passes of one fit. An L-BFGS fit of a probe makes a pass over its rows
/// every 0.05–0.3 ms; a thread-pool fork/join per pass costs a wake-up of about that much, so the
/// second core did not pay (docs/benchmarks.md, probing). This partner stays awake between the
/// passes of its fit instead: it spins (for at most <see cref="SpinMilliseconds"/> between passes,
/// then it blocks) and picks up work within microseconds.
/// <para>
/// A pass is cut into <see cref="Chunks"/> chunks that both threads claim one at a time, so a
/// partner that the operating system deschedules costs nothing but its own chunk: the caller
/// claims the rest. Each chunk writes only its own partial result, so the sums are the same
/// whichever thread ran which chunk (results do not depend on timing).
/// </para>
/// </summary>
internal sealed class PassPartner : IDisposable
{
    /// <summary>How long the partner spins without work before it blocks (about ten passes).</summary>
    public const double SpinMilliseconds = 2;

    private readonly Thread thread;
    private readonly ManualResetEventSlim wake = new(false, spinCount: 0);
    private readonly long spinTicks = (long)(SpinMilliseconds * Stopwatch.Frequency / 1000);
    private Pass? current;
    private int posted;    // passes posted
    private int sleeping;  // 1 while the partner blocks
    private volatile bool stopping;

    public PassPartner(int chunkCount)
    {
        Chunks = chunkCount;
        thread = new Thread(Loop) { IsBackground = true, Name = "probe fit partner" };
        thread.Start();
    }

    /// <summary>The chunks each pass is cut into.</summary>
    public int Chunks { get; }

    /// <summary>Runs <paramref name="chunk"/>(0 … <see cref="Chunks"/>−1), each once, on this thread and the partner; returns when all are done.</summary>
    public void Run(Action<int> chunk)
    {
        // A new object per pass: a partner still leaving the previous pass claims from that one.
        var pass = new Pass(chunk, Chunks);
        Volatile.Write(ref current, pass);
        Interlocked.Increment(ref posted);
        if (Volatile.Read(ref sleeping) == 1)
            wake.Set();
        pass.Claim();
        int waits = 0;
        while (Volatile.Read(ref pass.Finished) < pass.Chunks)
        {
            // The partner holds the last chunks (it claimed them, so it is running): wait for it.
            if (waits++ < 1000)
                Thread.SpinWait(20);
            else
                Thread.Yield();
        }
        if (pass.Failure is { } e)
            throw new InvalidOperationException("a pass of the probe fit failed", e);
    }

    private sealed class Pass(Action<int> work, int chunks)
    {
        public readonly int Chunks = chunks;
        public int Next;
        public int Finished;
        public Exception? Failure;

        public void Claim()
        {
            int k;
            while ((k = Interlocked.Increment(ref Next) - 1) < Chunks)
            {
                try
                {
                    work(k);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref Failure, e, null);
                }
                Interlocked.Increment(ref Finished);
            }
        }
    }

    private void Loop()
    {
        int seen = 0;
        while (true)
        {
            long idleSince = Stopwatch.GetTimestamp();
            while (Volatile.Read(ref posted) == seen && !stopping)
            {
                if (Stopwatch.GetTimestamp() - idleSince < spinTicks)
                {
                    Thread.SpinWait(20);
                    continue;
                }
                // Block until the next pass (or the end of the fit). Dekker-style: either Run sees
                // sleeping = 1 and sets wake, or this sees the new pass before it waits.
                Interlocked.Exchange(ref sleeping, 1);
                if (Volatile.Read(ref posted) == seen && !stopping)
                    wake.Wait();
                wake.Reset();
                Interlocked.Exchange(ref sleeping, 0);
                idleSince = Stopwatch.GetTimestamp();
            }
            if (stopping)
                return;
            seen = Volatile.Read(ref posted);
            Volatile.Read(ref current)?.Claim();
        }
    }

    public void Dispose()
    {
        stopping = true;
        wake.Set();
        thread.Join();
        wake.Dispose();
    }
}
