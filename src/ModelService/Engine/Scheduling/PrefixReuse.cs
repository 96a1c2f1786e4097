using System.Diagnostics;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Engine.Scheduling;

/// <summary>Rows of a reused Run that continue from the same position: their first touched position.</summary>
/// <param name="Start">The smallest position any intervention touches in these rows (0: a plain forward).</param>
/// <param name="Rows">The request's row indices, ascending.</param>
internal sealed record ReuseGroup(int Start, int[] Rows);

/// <summary>How a Run splits into one shared prefix forward and one forward per first touched position.</summary>
/// <param name="Length">Tokens per row (every row has the same ids).</param>
/// <param name="Groups">Rows some intervention touches, by first touched position (ascending); other rows take the prefix's answer.</param>
internal sealed record ReuseSplit(int Length, IReadOnlyList<ReuseGroup> Groups)
{
    /// <summary>Tokens the reused forwards compute: the prefix's row plus each touched row from its start.</summary>
    public long Tokens => Length + Groups.Sum(g => (long)g.Rows.Length * (Length - g.Start));
}

/// <summary>
/// Prefix reuse for patching sweeps: a Run whose rows all hold the same ids, each row patched from
/// some position on, needs the unpatched computation before that position only once. The engine
/// runs the sequence once for one row with a KV cache (that is also the answer of rows no
/// intervention touches) and then, for each distinct first touched position p, the rows starting
/// there over positions [p, T) from a copy of the cache's first p columns, with the interventions
/// re-targeted to those rows. Torch-thread only.
/// </summary>
internal static class PrefixReuse
{
    /// <summary>
    /// Largest KV cache one continuation forward holds (its rows × the whole sequence × every
    /// layer's keys and values); a group needing more runs in chunks of rows. Settable for tests only.
    /// </summary>
    internal static long MaxCacheBytes { get; set; } = 256L << 20;

    /// <summary>
    /// The split of a Run that prefix reuse serves exactly and more cheaply than one forward, or null
    /// (the plain forward). Needs: identical rows, last-position logits (top-k allowed), no loss, no
    /// gradient, no captures, every intervention value free of batch and position dimensions larger
    /// than 1 (so it means the same for a subset of rows and of positions), and fewer tokens to
    /// compute than the plain forward's.
    /// </summary>
    public static ReuseSplit? Split(ValidatedRun run, HookCatalogue hooks)
    {
        if (run.Loss || run.Logits != LogitsMode.Last || WantsGradient(run) || run.Plan.CapturedHooks.Any())
            return null;
        var rows = run.Rows;
        int n = rows.Length;
        if (n < 2)
            return null;
        var first = rows[0];
        for (int r = 1; r < n; r++)
        {
            if (!rows[r].AsSpan().SequenceEqual(first))
                return null;
        }
        int length = first.Length;
        var start = new int[n];
        Array.Fill(start, int.MaxValue);
        foreach (var target in run.Plan.Targets)
        {
            var iv = target.Intervention;
            if (iv.Value is { } value)
            {
                var shape = value.shape;
                foreach (var name in target.Hooks)
                {
                    if (!hooks.TryGet(name, out var hook) || !FreeOfBatchAndPosition(hook, shape))
                        return null;
                }
            }
            // An empty list of rows or positions touches nothing.
            if (iv.Rows is { Count: 0 } || iv.Positions is { Count: 0 })
                continue;
            int p = iv.Positions?.Min() ?? 0;
            if (iv.Rows is null)
            {
                for (int r = 0; r < n; r++)
                    start[r] = Math.Min(start[r], p);
            }
            else
            {
                foreach (var r in iv.Rows)
                    start[r] = Math.Min(start[r], p);
            }
        }
        var groups = Enumerable.Range(0, n)
            .Where(r => start[r] != int.MaxValue)
            .GroupBy(r => start[r])
            .OrderBy(g => g.Key)
            .Select(g => new ReuseGroup(g.Key, g.ToArray()))
            .ToList();
        var split = new ReuseSplit(length, groups);
        return split.Tokens < (long)n * length ? split : null;
    }

    /// <summary>
    /// Whether the Run asks for a gradient: it needs the whole graph of one forward (GradientRun), so
    /// it never takes the reuse path.
    /// </summary>
    private static bool WantsGradient(ValidatedRun run) => run.Gradient is not null;

    /// <summary>Whether a value of <paramref name="shape"/> has size 1 (or nothing) along the hook's batch and (query) position dimensions.</summary>
    private static bool FreeOfBatchAndPosition(HookInfo hook, long[] shape)
    {
        int rank = HookCatalogue.DimensionNames(hook).Length;
        int offset = rank - shape.Length;
        int position = hook.Layout == HookLayout.AttentionMap ? 2 : 1;
        foreach (var dim in (ReadOnlySpan<int>)[0, position])
        {
            if (dim >= offset && shape[dim - offset] != 1)
                return false;
        }
        return true;
    }

    /// <summary>
    /// Runs <paramref name="run"/> as <paramref name="split"/> says and returns the last-position
    /// logits of every row, <c>[batch, 1, vocab]</c>, in the caller's dispose scope. Intervention
    /// effects go to <paramref name="receipts"/> (one step); each forward is reported to <paramref name="observer"/>.
    /// </summary>
    public static Tensor Forward(Transformer transformer, ValidatedRun run, ReuseSplit split, InterventionReceipts receipts, IEngineObserver observer, CancellationToken cancellation)
    {
        int n = run.Rows.Length, length = split.Length;
        var started = Stopwatch.GetTimestamp();
        var row = tensor(run.Rows[0].Select(id => (long)id).ToArray(), device: transformer.Device).view(1, length);
        using var prefix = transformer.NewCache(1, length);
        var shared = transformer.Forward(row, null, [new HookSegment(0, 1, HookPlan.Empty)], LogitsMode.Last, prefix, cancellation)!;
        observer.Forward(1, length, Stopwatch.GetElapsedTime(started).TotalSeconds);
        var perRow = Enumerable.Repeat(shared, n).ToArray();
        var interventions = run.Plan.Targets.Select(t => t.Intervention).ToList();
        var c = transformer.Config;
        long cacheBytesPerRow = (long)length * c.NLayers * 2 * c.NKvHeads * c.DHead * (transformer.DType == ScalarType.Float32 ? 4 : 2);
        int chunkRows = (int)Math.Clamp(MaxCacheBytes / cacheBytesPerRow, 1, int.MaxValue);
        foreach (var group in split.Groups.SelectMany(g => g.Rows.Chunk(chunkRows).Select(rows => g with { Rows = rows })))
        {
            started = Stopwatch.GetTimestamp();
            int rows = group.Rows.Length, p = group.Start;
            var segment = new HookSegment(0, rows, GroupPlan(transformer.Hooks, interventions, group.Rows, receipts), null, receipts);
            var tokens = row.narrow(1, p, length - p).expand(rows, length - p);
            Tensor logits;
            if (p == 0)
            {
                logits = transformer.Forward(tokens, null, [segment], LogitsMode.Last, null, cancellation)!;
            }
            else
            {
                using var cache = transformer.NewCache(rows, length);
                cache.CopyPrefix(prefix, 0, p);
                logits = transformer.Forward(tokens, null, [segment], LogitsMode.Last, cache, cancellation)!;
            }
            observer.Forward(rows, rows * (length - p), Stopwatch.GetElapsedTime(started).TotalSeconds);
            for (int j = 0; j < rows; j++)
                perRow[group.Rows[j]] = logits.narrow(0, j, 1);
        }
        return cat(perRow, 0);
    }

    /// <summary>
    /// The plan of one group: the request's interventions in order, those limited to rows re-targeted
    /// to the group's rows (their receipts still count for the original), those touching none of them left out.
    /// </summary>
    private static HookPlan GroupPlan(HookCatalogue hooks, List<Intervention> interventions, int[] rows, InterventionReceipts receipts)
    {
        var local = new Dictionary<int, int>();
        for (int j = 0; j < rows.Length; j++)
            local[rows[j]] = j;
        var list = new List<Intervention>();
        foreach (var iv in interventions)
        {
            if (iv.Rows is null)
            {
                list.Add(iv);
                continue;
            }
            var mapped = iv.Rows.Where(local.ContainsKey).Select(r => local[r]).Distinct().ToArray();
            if (mapped.Length == 0)
                continue;
            var standIn = iv with { Rows = mapped };
            receipts.Alias(standIn, iv);
            list.Add(standIn);
        }
        return HookPlan.Build(hooks, null, list);
    }
}
