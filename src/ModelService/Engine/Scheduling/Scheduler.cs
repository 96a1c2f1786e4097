using System.Diagnostics;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace InterpMesh.Engine.Scheduling;

/// <summary>
/// The torch thread's work, one forward step at a time. Each iteration runs at most one batch of
/// compatible Runs, one prefill of a waiting Generate, and one decode step for every running
/// Generate, so a Run never waits for more than a decode step and a prefill. Generations share one
/// KV cache whose rows are kept contiguous: running requests first, paused ones (reader behind)
/// after them; rows are reordered only when a request joins, pauses, resumes or leaves.
/// Torch-thread only.
/// </summary>
internal sealed class Scheduler(LoadedModel model, EngineOptions options, IEngineObserver observer, HostBufferPool capturePool)
{
    public static readonly ActivitySource Tracing = new("InterpMesh.Engine");

    private readonly Transformer transformer = model.Transformer;
    private readonly List<RunWork> runs = [];
    private readonly List<GenerateWork> waiting = [];
    private readonly List<GenerateWork> resident = [];
    private KvCache? cache;
    // The decode step's view of rows [0, viewRows) of the cache, kept while neither changes.
    private KvCache? view;
    private int viewRows;

    public void Add(Work work)
    {
        if (work is RunWork run)
            runs.Add(run);
        else
            waiting.Add((GenerateWork)work);
    }

    /// <summary>One round. Returns how long to wait for new work (null: call again at once).</summary>
    public TimeSpan? Iterate(Action drain, Func<TimeSpan, bool> waitForWork)
    {
        DropGone();
        UpdatePauses();
        bool decoding = resident.Any(g => g.PausedSince is null);
        if (runs.Count == 0 && waiting.Count == 0 && !decoding)
            return resident.Count > 0 ? TimeSpan.FromMilliseconds(5) : Timeout.InfiniteTimeSpan;

        if (runs.Count > 0)
        {
            // Alone on the thread, the oldest Run waits briefly for compatible company (one served by
            // prefix reuse has none to wait for).
            var window = TimeSpan.FromMilliseconds(options.BatchWindowMs);
            while (!decoding && waiting.Count == 0 && runs.Count > 0 && runs.Sum(r => r.Run.Rows.Length) < options.BatchMaxRows && ReuseOf(runs[0]) is null)
            {
                var left = window - Stopwatch.GetElapsedTime(runs[0].Arrived);
                if (left <= TimeSpan.Zero)
                    break;
                waitForWork(left);
                drain();
                DropGone();
            }
            if (runs.Count == 0)
                return null;
            var group = TakeGroup();
            if (group.Count > 0)
                ExecuteRuns(group);
        }
        if (waiting.Count > 0)
            Prefill();
        if (resident.Any(g => g.PausedSince is null))
            Decode();
        return null;
    }

    /// <summary>Ends every request (the engine is stopping).</summary>
    public void Shutdown() => FailAll(new EngineStoppedException());

    /// <summary>
    /// Ends every request in flight with <paramref name="error"/> and frees the decode cache. Never
    /// throws: the torch thread calls it when something else already failed.
    /// </summary>
    public void FailAll(Exception error)
    {
        var all = runs.Cast<Work>().Concat(waiting).Concat(resident).ToList();
        runs.Clear();
        waiting.Clear();
        resident.Clear();
        foreach (var w in all)
        {
            try
            {
                w.Finish(error);
            }
            catch (Exception)
            {
                // Its reader was completed first thing in Finish; only freeing what it owns failed.
            }
        }
        try
        {
            SetCache(null);
        }
        catch (Exception)
        {
            cache = null;
            view = null;
        }
    }

    private void DropGone()
    {
        for (int i = runs.Count - 1; i >= 0; i--)
        {
            if (runs[i].Gone)
            {
                runs[i].Finish();
                runs.RemoveAt(i);
            }
        }
        for (int i = waiting.Count - 1; i >= 0; i--)
        {
            if (waiting[i].Gone)
            {
                waiting[i].Finish();
                waiting.RemoveAt(i);
            }
        }
        foreach (var g in resident.Where(g => g.Gone).ToList())
        {
            g.Finish();
            Leave(g);
        }
    }

    /// <summary>A Generate whose reader fell behind pauses; it resumes once its buffer drains below the limit.</summary>
    private void UpdatePauses()
    {
        foreach (var g in resident)
        {
            if (g.Buffer.ReaderBehind)
                g.PausedSince ??= Stopwatch.GetTimestamp();
            else
                g.PausedSince = null;
        }
    }

    /// <summary>
    /// The oldest Run and every later one with its key that fits, in arrival order. A Run served by
    /// prefix reuse goes alone (its forwards are its own) and joins no other group.
    /// </summary>
    private List<RunWork> TakeGroup()
    {
        var group = new List<RunWork>();
        int rows = 0;
        for (int i = 0; i < runs.Count; i++)
        {
            var run = runs[i];
            bool alone = ReuseOf(run) is not null;
            if (group.Count > 0 && (alone || run.Run.Key != group[0].Run.Key || rows + run.Run.Rows.Length > options.BatchMaxRows))
                continue;
            group.Add(run);
            rows += run.Run.Rows.Length;
            runs.RemoveAt(i--);
            if (alone)
                break;
        }
        return group;
    }

    /// <summary>How prefix reuse would serve <paramref name="run"/>, or null (off, or the plain forward).</summary>
    private ReuseSplit? ReuseOf(RunWork run) => options.PrefixReuse ? PrefixReuse.Split(run.Run, transformer.Hooks) : null;

    /// <summary>A Run through prefix reuse (its forwards are its own): answered as a plain forward's would be.</summary>
    private void ExecuteReused(RunWork run, ReuseSplit split, Tensor ids, Tensor mask, Activity? activity)
    {
        int n = run.Run.Rows.Length;
        activity?.SetTag("interpmesh.requests", 1);
        activity?.SetTag("interpmesh.batch_size", n);
        activity?.SetTag("interpmesh.prefix_reuse", true);
        using var gone = AllGone([run]);
        var logits = PrefixReuse.Forward(transformer, run.Run, split, run.Receipts, observer, gone.Token);
        if (!run.Gone)
        {
            run.Receipts.EndStep();
            run.Buffer.Write(Outcome(run, ids, mask, logits, n));
        }
        run.Finish();
    }

    private void ExecuteRuns(List<RunWork> group)
    {
        try
        {
            ExecuteRunGroup(group);
        }
        catch (Exception e) when (group.Count > 1 && e is not OperationCanceledException)
        {
            // One member's request broke the shared forward: run each alone so only that one fails
            // (members already answered before the failure are done).
            foreach (var run in group.Where(r => !r.Finished))
                ExecuteRuns([run]);
        }
        catch (Exception e)
        {
            foreach (var run in group)
                run.Finish(e);
        }
    }

    private void ExecuteRunGroup(List<RunWork> group)
    {
        if (group is [{ Run.Gradient: not null } alone])
        {
            GradientRun.Execute(transformer, alone, observer, Sink(alone, alone.Run.Reductions, () => 0));
            return;
        }
        var started = Stopwatch.GetTimestamp();
        using var activity = group.Count == 1
            ? Tracing.StartActivity("interpmesh.forward", ActivityKind.Internal, group[0].Trace)
            : Tracing.StartActivity("interpmesh.forward", ActivityKind.Internal, default(ActivityContext),
                links: group.Where(r => r.Trace != default).Select(r => new ActivityLink(r.Trace)));
        using var scope = NewDisposeScope();
        var first = group[0].Run;
        var rows = group.SelectMany(r => r.Run.Rows).Select(r => (IReadOnlyList<int>)r).ToList();
        var (ids, mask) = TokenBatch.Pad(rows, first.Padding, transformer.Device);
        if (group.Count == 1 && ReuseOf(group[0]) is { } split)
        {
            ExecuteReused(group[0], split, ids, mask, activity);
            return;
        }
        var segments = new List<HookSegment>();
        int start = 0;
        foreach (var run in group)
        {
            segments.Add(new HookSegment(start, run.Run.Rows.Length, run.Plan, Sink(run, run.Run.Reductions, () => 0), run.Receipts));
            start += run.Run.Rows.Length;
        }
        activity?.SetTag("interpmesh.requests", group.Count);
        activity?.SetTag("interpmesh.batch_size", rows.Count);
        using var gone = AllGone(group);
        var logits = transformer.Forward(ids, mask, segments, first.Loss ? LogitsMode.All : first.Logits, null, gone.Token);
        observer.Forward(rows.Count, rows.Sum(r => r.Count), Stopwatch.GetElapsedTime(started).TotalSeconds);
        start = 0;
        foreach (var run in group)
        {
            int n = run.Run.Rows.Length;
            if (!run.Gone)
            {
                run.Receipts.EndStep();
                run.Buffer.Write(Outcome(run, ids.narrow(0, start, n), mask.narrow(0, start, n), logits?.narrow(0, start, n), rows.Count));
            }
            run.Finish();
            start += n;
        }
    }

    /// <summary>One request's logits, top-k and loss from its rows of the forward.</summary>
    internal static RunOutcome Outcome(RunWork work, Tensor ids, Tensor mask, Tensor? logits, int forwardRows, double? metric = null, double[]? rowMetrics = null)
    {
        var run = work.Run;
        int batch = (int)ids.shape[0], length = (int)ids.shape[1];
        double? loss = null;
        HostTensor? full = null, topIds = null, topValues = null;
        if (logits is not null)
        {
            if (run.Loss)
            {
                var targets = ids[.., 1..];
                var valid = mask[.., 1..].logical_and(mask[.., ..^1]);
                var losses = F.cross_entropy(logits[.., ..^1].reshape(-1, logits.shape[2]).to(ScalarType.Float32), targets.reshape(-1), reduction: nn.Reduction.None);
                var count = valid.sum().item<long>();
                if (count > 0)
                    loss = (losses * valid.reshape(-1)).sum().item<float>() / count;
                if (run.Logits == LogitsMode.Last)
                {
                    var last = (mask.to(ScalarType.Int64) * Scalars.Arange(length, ScalarType.Int64, mask.device)).amax([1]);
                    logits = logits.gather(1, last.view(-1, 1, 1).expand(batch, 1, logits.shape[2]));
                }
            }
            if (run.Logits != LogitsMode.None)
            {
                if (run.TopK > 0)
                {
                    var (values, indices) = logits.to(ScalarType.Float32).topk(Math.Min(run.TopK, (int)logits.shape[2]), -1);
                    topIds = HostTensor.From(indices);
                    topValues = HostTensor.From(values);
                }
                else
                {
                    full = HostTensor.From(logits.to(ScalarType.Float32));
                }
            }
        }
        return new RunOutcome
        {
            Tokens = HostTensor.From(ids),
            AttentionMask = HostTensor.From(mask.to(ScalarType.Int64)),
            Logits = full,
            TopKIds = topIds,
            TopKValues = topValues,
            Loss = loss,
            ForwardBatchSize = forwardRows,
            Receipts = work.Receipts.Snapshot(),
            Metric = metric,
            RowMetrics = rowMetrics ?? [],
        };
    }

    /// <summary>Hands a request's captures to its buffer (reduced if asked), copied off the device; never waits.</summary>
    private CaptureSink Sink(Work work, Dictionary<string, CaptureReduction> reductions, Func<int> step) => (hook, value) =>
    {
        if (work.Gone)
            return;
        if (reductions.TryGetValue(hook.Name, out var r) && r == CaptureReduction.Mean)
            value = value.to(ScalarType.Float32).mean([hook.Layout == HookLayout.AttentionMap ? 2L : 1L], keepdim: true).to(value.dtype);
        var host = HostTensor.From(value, capturePool);
        work.Buffer.Write(new CaptureOutput(hook.Name, step(), host));
    };

    /// <summary>A token that fires once every one of <paramref name="works"/> is gone (so a shared forward stops early).</summary>
    private static Gone AllGone(IReadOnlyList<Work> works) => new(works);

    private sealed class Gone : IDisposable
    {
        private readonly CancellationTokenSource cts = new();
        private readonly List<CancellationTokenRegistration> registrations = [];
        private int remaining;

        public Gone(IReadOnlyList<Work> works)
        {
            remaining = works.Count;
            foreach (var w in works)
            {
                int once = 0;
                void Left()
                {
                    if (Interlocked.Exchange(ref once, 1) == 0 && Interlocked.Decrement(ref remaining) == 0)
                        cts.Cancel();
                }
                registrations.Add(w.Cancellation.Register(Left));
                registrations.Add(w.Buffer.Aborted.Register(Left));
            }
        }

        public CancellationToken Token => cts.Token;

        public void Dispose()
        {
            foreach (var r in registrations)
                r.Dispose();
            cts.Dispose();
        }
    }

    // ---- generation -------------------------------------------------------------------------

    private int UsedRows => resident.Sum(g => g.Rows);

    /// <summary>Moves the oldest waiting Generate that fits into the decode batch and runs its prompt.</summary>
    private void Prefill()
    {
        var g = waiting.FirstOrDefault(w => UsedRows + w.Rows <= Math.Max(options.MaxDecodeRows, w.Rows) || resident.Count == 0);
        if (g is null)
            return;
        waiting.Remove(g);
        var started = Stopwatch.GetTimestamp();
        Activity? activity = null;
        try
        {
            // Inside the try: from here on the request is in no list, so whatever fails must finish it.
            activity = Tracing.StartActivity("interpmesh.prefill", ActivityKind.Internal, g.Trace);
            using var scope = NewDisposeScope();
            int need = g.Generate.PromptLength + g.Generate.MaxNewTokens;
            Reserve(g.Rows, need);
            g.Slot = UsedRows;
            resident.Add(g);
            cache!.ResetRows(g.Slot, g.Rows);
            g.Sampler = g.Generate.Sampling.Temperature > 0 ? new torch.Generator((ulong)g.Generate.Sampling.Seed, transformer.Device) : null;
            var (ids, mask) = TokenBatch.Pad(g.Generate.Prompts.Select(p => (IReadOnlyList<int>)p).ToList(), PaddingSide.Left, transformer.Device);
            using var view = cache.Rows(g.Slot, g.Rows);
            var segment = new HookSegment(0, g.Rows, g.Plan, Sink(g, g.Generate.Reductions, () => g.Step), g.Receipts);
            var logits = transformer.Forward(ids, mask, [segment], LogitsMode.Last, view, g.Cancellation)!;
            observer.Forward(g.Rows, g.Generate.Prompts.Sum(p => p.Length), Stopwatch.GetElapsedTime(started).TotalSeconds);
            if (Emit(g, logits.select(1, 0), g.Rows))
            {
                g.Finish();
                Leave(g);
            }
        }
        catch (Exception e) when (!g.Finished)
        {
            g.Finish(e);
            if (resident.Contains(g))
                Leave(g);
        }
        // Failing after the request was answered (giving its cache rows up) leaves the cache in doubt:
        // that goes to the torch thread, which ends every request and drops the cache.
        finally
        {
            activity?.Dispose();
        }
    }

    /// <summary>Makes sure the cache has room for <paramref name="rows"/> more rows of <paramref name="length"/> positions.</summary>
    private void Reserve(int rows, int length)
    {
        int needRows = UsedRows + rows;
        if (cache is not null && cache.Batch >= needRows && cache.Capacity >= length)
            return;
        int context = transformer.Config.ContextLength;
        int batch = Math.Max(needRows, Math.Min(options.MaxDecodeRows, Math.Max(8, (cache?.Batch ?? 0) * 2)));
        int capacity = Math.Min(context, Math.Max(length, RoundUp(Math.Max(cache?.Capacity ?? 0, length), 64)));
        SetCache(cache is null ? transformer.NewCache(batch, capacity) : cache.Grow(transformer.Config, batch, capacity));
    }

    /// <summary>Replaces (or drops) the decode cache; the cached row view goes with it.</summary>
    private void SetCache(KvCache? next)
    {
        view?.Dispose();
        view = null;
        if (!ReferenceEquals(cache, next))
            cache?.Dispose();
        cache = next;
    }

    private static int RoundUp(int n, int multiple) => (n + multiple - 1) / multiple * multiple;

    /// <summary>One decode step for every running Generate.</summary>
    private void Decode()
    {
        // Running requests first, in their current order, then paused ones.
        if (resident.Any(g => g.PausedSince is not null))
            Arrange(resident.Where(g => g.PausedSince is null).Concat(resident.Where(g => g.PausedSince is not null)).ToList());
        var running = resident.Where(g => g.PausedSince is null).ToList();
        int rows = running.Sum(g => g.Rows);
        var started = Stopwatch.GetTimestamp();
        using var activity = Tracing.StartActivity("interpmesh.decode", ActivityKind.Internal, default(ActivityContext),
            links: running.Where(r => r.Trace != default).Select(r => new ActivityLink(r.Trace)));
        activity?.SetTag("interpmesh.batch_size", rows);
        try
        {
            using var scope = NewDisposeScope();
            var input = tensor(running.SelectMany(g => g.Last).ToArray(), [rows, 1], device: transformer.Device);
            var segments = running.Select(g => new HookSegment(g.Slot, g.Rows, g.Plan, Sink(g, g.Generate.Reductions, () => g.Step), g.Receipts)).ToList();
            if (view is null || viewRows != rows)
            {
                view?.Dispose();
                view = cache!.Rows(0, rows);
                viewRows = rows;
            }
            // One request: its own token; several: a token that fires once all of them are gone.
            using var gone = running.Count > 1 ? AllGone(running) : null;
            var logits = transformer.Forward(input, null, segments, LogitsMode.Last, view, gone?.Token ?? running[0].Cancellation)!.select(1, 0);
            observer.Forward(rows, rows, Stopwatch.GetElapsedTime(started).TotalSeconds);
            // Greedy rows of every request in one argmax (row by row it is the same choice).
            long[]? greedy = running.Any(g => g.Generate.Sampling.Temperature == 0)
                ? logits.argmax(-1).to(ScalarType.Int64).cpu().data<long>().ToArray()
                : null;
            // Slots are read before any request leaves: leaving compacts the rows behind it.
            var slots = running.Select(g => g.Slot).ToArray();
            var finished = new List<GenerateWork>();
            for (int i = 0; i < running.Count; i++)
            {
                var g = running[i];
                int[]? chosen = greedy is not null && g.Generate.Sampling.Temperature == 0
                    ? greedy.AsSpan(slots[i], g.Rows).ToArray().Select(x => (int)x).ToArray()
                    : null;
                if (Emit(g, logits.narrow(0, slots[i], g.Rows), rows, chosen))
                    finished.Add(g);
            }
            foreach (var g in finished)
            {
                g.Finish();
                Leave(g);
            }
        }
        catch (OperationCanceledException) when (running.All(g => g.Gone))
        {
            // Every running request went away mid-step; DropGone frees them next round.
        }
        catch (Exception e)
        {
            // Each request is finished (its reader told) before its rows are given up, which can fail too.
            foreach (var g in running)
                g.Finish(e);
            foreach (var g in running)
                Leave(g);
        }
    }

    /// <summary>Chooses each row's next id and streams the step; true when the request is finished (the caller retires it).</summary>
    private bool Emit(GenerateWork g, Tensor logits, int forwardRows, int[]? chosen = null)
    {
        var spec = g.Generate;
        var next = chosen ?? TextGenerator.Choose(logits, spec.Sampling, g.Sampler);
        var emitted = new int[g.Rows];
        var stopped = g.Stopped;
        for (int r = 0; r < g.Rows; r++)
        {
            if (stopped[r])
            {
                emitted[r] = -1;
                continue;
            }
            emitted[r] = next[r];
            if (spec.StopIds.Contains(next[r]))
                stopped[r] = true;
        }
        g.Receipts.EndStep();
        bool final = stopped.All(s => s) || g.Step == spec.MaxNewTokens - 1;
        g.Buffer.Write(new GenerateStep
        {
            Step = g.Step,
            Ids = emitted,
            PromptTokens = g.Step == 0 ? spec.Prompts : null,
            Final = final,
            Receipts = final ? g.Receipts.Snapshot() : [],
            ForwardRows = forwardRows,
        });
        // Rows that stopped keep running (their ids are ignored), as in a solo generation.
        g.Last = next.Select(x => (long)x).ToArray();
        g.Step++;
        return final;
    }

    /// <summary>Removes a request from the decode batch, compacting the cache rows behind it.</summary>
    private void Leave(GenerateWork g)
    {
        if (!resident.Remove(g))
            return;
        if (resident.Count == 0)
        {
            // Idle: give the cache's memory back.
            SetCache(null);
            return;
        }
        Arrange(resident.ToList());
    }

    /// <summary>Puts the resident requests' rows in <paramref name="order"/>, contiguous from row 0.</summary>
    private void Arrange(List<GenerateWork> order)
    {
        if (order.Count == resident.Count)
        {
            int slot = 0;
            bool same = true;
            for (int i = 0; i < order.Count && same; i++)
            {
                same = ReferenceEquals(order[i], resident[i]) && order[i].Slot == slot;
                slot += order[i].Rows;
            }
            if (same)
                return;
        }
        var rows = new List<int>();
        bool moved = false;
        foreach (var g in order)
        {
            moved |= g.Slot != rows.Count;
            for (int r = 0; r < g.Rows; r++)
                rows.Add(g.Slot + r);
        }
        if (moved && cache is not null)
        {
            cache.Reorder(rows);
            int slot = 0;
            foreach (var g in order)
            {
                g.Slot = slot;
                slot += g.Rows;
            }
        }
        resident.Clear();
        resident.AddRange(order);
    }
}
