using System.Diagnostics;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// A second thread for the passes of one fit. An L-BFGS fit of a probe makes a pass over its rows
/// every 0.05–0.3 ms; a thread-pool fork/join per pass costs a wake-up of about that much, so the
/// second core did not pay (docs/benchmarks.md, probing). This partner stays awake between the
/// passes of its fit instead: it spins (for at most <see cref="SpinMilliseconds"/> between passes,
/// then it blocks) and picks up work within microseconds.
/// <para>
/// A pass is cut into <see cref="Chunks"/> chunks that both threads claim one at a time. The caller
/// never waits for the partner: once no chunk is left to claim, it computes any chunk the partner
/// holds but has not finished itself (a partner the operating system descheduled mid-chunk would
/// otherwise hold the pass for a scheduler tick, milliseconds). Each worker writes its own buffer
/// per chunk and the first to finish a chunk is the one whose buffer counts
/// (<see cref="Run"/> answers which); both compute the same values, so the sums do not depend on
/// timing.
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

    /// <summary>
    /// Runs <paramref name="chunk"/>(k, worker) for every k in 0 … <see cref="Chunks"/>−1 on this
    /// thread (worker 0) and the partner (worker 1), each chunk into that worker's own buffer;
    /// returns, for each chunk, the worker whose result counts. A chunk may be computed by both.
    /// </summary>
    public int[] Run(Action<int, int> chunk)
    {
        // A new object per pass: a partner still leaving the previous pass finishes into that one.
        var pass = new Pass(chunk, Chunks);
        Volatile.Write(ref current, pass);
        Interlocked.Increment(ref posted);
        if (Volatile.Read(ref sleeping) == 1)
            wake.Set();
        pass.Claim(worker: 0);
        // Chunks the partner claimed and has not finished: compute them here too, first one wins.
        for (int k = 0; k < pass.Chunks; k++)
        {
            if (Volatile.Read(ref pass.Winner[k]) == 0)
                pass.Compute(k, worker: 0);
        }
        if (pass.Failure is { } e)
            throw new InvalidOperationException("a pass of the probe fit failed", e);
        var winners = new int[pass.Chunks];
        for (int k = 0; k < pass.Chunks; k++)
            winners[k] = pass.Winner[k] - 1;
        return winners;
    }

    private sealed class Pass(Action<int, int> work, int chunks)
    {
        public readonly int Chunks = chunks;
        /// <summary>Per chunk: 0 while unfinished, else 1 + the worker whose result counts.</summary>
        public readonly int[] Winner = new int[chunks];
        public int Next;
        public Exception? Failure;

        public void Claim(int worker)
        {
            int k;
            while ((k = Interlocked.Increment(ref Next) - 1) < Chunks)
                Compute(k, worker);
        }

        public void Compute(int k, int worker)
        {
            try
            {
                work(k, worker);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref Failure, e, null);
            }
            Interlocked.CompareExchange(ref Winner[k], worker + 1, 0);
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
            Volatile.Read(ref current)?.Claim(worker: 1);
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
