using InterpMesh.Runtime.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Hooks;

/// <summary>Receives each captured activation as soon as its stage of the forward (embeddings, a block, the final norm) has finished.</summary>
/// <param name="hook">The hook point.</param>
/// <param name="value">The selected positions in the requested dtype, in the forward caller's dispose
/// scope (as is anything the sink creates): copy it, keep it within that scope, or move it out. All
/// positions in the activation's own dtype come as a view of the activation itself (no copy); the
/// forward never writes to an activation in place after its hook point, so the values stay those
/// at the hook.</param>
public delegate void CaptureSink(HookInfo hook, Tensor value);

/// <summary>
/// Called at each of a plan's <see cref="HookPlan.GradientHooks"/> after the hook's interventions,
/// with the segment's rows of the activation; returns the activation to continue with (for
/// gradients: <c>x + z</c> with a zero leaf <c>z</c> that requires grad, so grad(z) = d metric / d x).
/// </summary>
public delegate Tensor GradientProbe(HookInfo hook, Tensor value);

/// <summary>
/// One request's rows of a (possibly shared) forward: rows <c>[Start, Start + Rows)</c> run with
/// this request's plan, captures go to its sink and intervention effects to its receipts. Rows of
/// one segment share their KV-cache length, so positions mean the same for all of them.
/// </summary>
public sealed class HookSegment(int start, int rows, HookPlan plan, CaptureSink? sink = null, InterventionReceipts? receipts = null, GradientProbe? probe = null)
{
    public int Start { get; } = start;
    public int Rows { get; } = rows;
    public HookPlan Plan { get; } = plan;
    public CaptureSink? Sink { get; } = sink;
    public InterventionReceipts? Receipts { get; } = receipts;
    /// <summary>Applied at the plan's gradient hooks after their interventions (null: none).</summary>
    public GradientProbe? Probe { get; } = probe;
}

/// <summary>
/// Applies each segment's <see cref="HookPlan"/> inside one forward: runs interventions on the
/// segment's rows, then hands captures to its sink. Knows the batch's padding so "last position"
/// means the last real token, and each segment's position offset (its KV-cache length).
/// </summary>
internal sealed class HookContext
{
    private readonly HookCatalogue catalogue;
    private readonly IReadOnlyList<HookSegment> segments;
    private readonly Tensor lastRealIndex;
    private readonly int[] offsets;
    private readonly IReadOnlySet<string> active;
    private readonly bool single;
    private readonly List<(HookSegment Segment, HookInfo Hook, Tensor Value)> pending = [];

    public HookContext(HookCatalogue catalogue, IReadOnlyList<HookSegment> segments, Tensor lastRealIndex, int[] offsets)
    {
        this.catalogue = catalogue;
        this.segments = segments;
        this.lastRealIndex = lastRealIndex;
        this.offsets = offsets;
        single = segments.Count == 1;
        if (single)
        {
            active = segments[0].Plan.Active;
        }
        else
        {
            var union = new HashSet<string>(StringComparer.Ordinal);
            foreach (var s in segments)
                union.UnionWith(s.Plan.Active);
            active = union;
        }
    }

    /// <summary>Whether a hook needs to be materialised at all (expensive hooks are skipped otherwise).</summary>
    public bool Wants(string name) => active.Count != 0 && active.Contains(name);

    /// <summary>Hook names some segment captures or changes.</summary>
    public IReadOnlySet<string> Active => active;

    /// <summary>Runs the plans at one hook point and returns the (possibly changed) activation.</summary>
    public Tensor Run(string name, Tensor x)
    {
        if (!Wants(name))
            return x;
        catalogue.TryGet(name, out var hook);
        if (single)
        {
            x = Intervene(segments[0], hook!, x, offsets[0]);
        }
        else
        {
            Tensor[]? pieces = null;
            for (int i = 0; i < segments.Count; i++)
            {
                var s = segments[i];
                if (!s.Plan.TryGetInterventions(name, out _) && !Probes(s, name))
                    continue;
                var own = x.narrow(0, s.Start, s.Rows);
                var changed = Intervene(s, hook!, own, offsets[i]);
                if (ReferenceEquals(changed, own))
                    continue;
                pieces ??= segments.Select(g => x.narrow(0, g.Start, g.Rows)).ToArray();
                pieces[i] = changed;
            }
            if (pieces is not null)
                x = cat(pieces, 0);
        }
        for (int i = 0; i < segments.Count; i++)
        {
            var s = segments[i];
            if (!s.Plan.TryGetCapture(name, out var spec))
                continue;
            // Hooks run one dispose scope below the forward's caller (per block, or the embedding
            // or final stage): the capture moves to the caller's scope and reaches the sink once
            // the stage's scope has closed, so whatever the sink creates also lives in the caller's scope.
            var own = single ? x : x.narrow(0, s.Start, s.Rows);
            var last = single ? lastRealIndex : lastRealIndex.narrow(0, s.Start, s.Rows);
            var captured = Select(hook!, own, spec.Positions, spec.DType, last, offsets[i], aliasWhole: true);
            captured.MoveToOuterDisposeScope();
            pending.Add((s, hook!, captured));
        }
        return x;
    }

    private static bool Probes(HookSegment s, string name) => s.Probe is not null && s.Plan.GradientHooks.Contains(name);

    private static Tensor Intervene(HookSegment s, HookInfo hook, Tensor x, int offset)
    {
        if (s.Plan.TryGetInterventions(hook.Name, out var list))
        {
            foreach (var iv in list)
            {
                var before = x;
                x = iv.Apply(hook, x, offset);
                s.Receipts?.Record(iv, before, x);
            }
        }
        // The gradient is taken at the activation the rest of the forward sees: after the interventions.
        if (Probes(s, hook.Name))
            x = s.Probe!(hook, x);
        return x;
    }

    /// <summary>Hands the captures of the stage that just finished to the sinks, in forward order.</summary>
    public void Flush()
    {
        foreach (var (segment, hook, value) in pending)
        {
            if (segment.Sink is { } sink)
                sink(hook, value);
            else
                value.Dispose();
        }
        pending.Clear();
    }

    /// <summary>
    /// A capture's selection of <paramref name="x"/> (one segment's rows): the requested positions
    /// (last real token per row, indices, or all) in <paramref name="dtype"/>, never aliasing x
    /// unless <paramref name="aliasWhole"/>. Gradients are selected with it too.
    /// </summary>
    /// <param name="aliasWhole">All positions in x's own dtype: return a new handle on x's storage
    /// instead of a copy. Only for captures handed to a sink when their stage ends (which copies
    /// them to the host then): no stage writes in place to an activation after its hook point, so
    /// the values are those at the hook, and the activation is copied once instead of twice.</param>
    internal static Tensor Select(HookInfo hook, Tensor x, PositionSelection positions, ScalarType dtype, Tensor lastRealIndex, int positionOffset, bool aliasWhole = false)
    {
        int posDim = hook.Layout == HookLayout.AttentionMap ? 2 : 1;
        Tensor selected;
        switch (positions.Kind)
        {
            case PositionKind.Last:
                {
                    // One index per row: gather along the position dim.
                    var shape = x.shape;
                    var indexShape = (long[])shape.Clone();
                    indexShape[posDim] = 1;
                    var viewShape = Enumerable.Repeat(1L, shape.Length).ToArray();
                    viewShape[0] = shape[0];
                    var local = Scalars.SubValue(lastRealIndex, positionOffset).clamp_min(Scalars.Zero);
                    selected = x.gather(posDim, local.view(viewShape).expand(indexShape));
                    break;
                }
            case PositionKind.Indices:
                {
                    long n = x.shape[posDim];
                    var idx = positions.Indices!.Select(i => (long)(i < 0 ? n + i : i - positionOffset)).ToArray();
                    foreach (var i in idx)
                    {
                        if (i < 0 || i >= n)
                            throw new InvalidRequestException($"capture position out of range for '{hook.Name}': the sequence has {n + positionOffset} positions");
                    }
                    selected = x.index_select(posDim, tensor(idx, device: x.device));
                    break;
                }
            default:
                selected = x;
                break;
        }
        // A kept selection must not alias the live activation: later in-place work would change it.
        return ReferenceEquals(selected, x)
            ? (x.dtype != dtype ? x.to(dtype) : aliasWhole ? x.alias() : x.clone())
            : (selected.dtype == dtype ? selected : selected.to(dtype));
    }
}
