using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Hooks;

/// <summary>Receives each captured activation as soon as its stage of the forward (embeddings, a block, the final norm) has finished.</summary>
/// <param name="hook">The hook point.</param>
/// <param name="value">The selected positions in the requested dtype, in the forward caller's dispose
/// scope (as is anything the sink creates): copy it, keep it within that scope, or move it out.</param>
public delegate void CaptureSink(HookInfo hook, Tensor value);

/// <summary>
/// Applies one request's <see cref="HookPlan"/> inside one forward: runs interventions, then hands
/// captures to the sink. Knows the batch's padding so "last position" means the last real token.
/// </summary>
internal sealed class HookContext(HookCatalogue catalogue, HookPlan plan, CaptureSink sink, Tensor lastRealIndex, int positionOffset)
{
    private readonly List<(HookInfo Hook, Tensor Value)> pending = [];

    public HookPlan Plan => plan;

    /// <summary>Whether a hook needs to be materialised at all (expensive hooks are skipped otherwise).</summary>
    public bool Wants(string name) => plan.IsActive(name);

    /// <summary>Runs the plan at one hook point and returns the (possibly changed) activation.</summary>
    public Tensor Run(string name, Tensor x)
    {
        if (!plan.IsActive(name))
            return x;
        catalogue.TryGet(name, out var hook);
        if (plan.TryGetInterventions(name, out var list))
        {
            foreach (var iv in list)
                x = iv.Apply(hook, x, positionOffset);
        }
        if (plan.TryGetCapture(name, out var spec))
        {
            // Hooks run one dispose scope below the forward's caller (per block, or the embedding
            // or final stage): the capture moves to the caller's scope and reaches the sink once
            // the stage's scope has closed, so whatever the sink creates also lives in the caller's scope.
            var captured = Select(hook, x, spec.Positions, spec.DType);
            captured.MoveToOuterDisposeScope();
            pending.Add((hook, captured));
        }
        return x;
    }

    /// <summary>Hands the captures of the stage that just finished to the sink, in forward order.</summary>
    public void Flush()
    {
        foreach (var (hook, value) in pending)
            sink(hook, value);
        pending.Clear();
    }

    private Tensor Select(HookInfo hook, Tensor x, PositionSelection positions, ScalarType dtype)
    {
        int posDim = hook.Layout == HookLayout.AttentionMap ? 2 : 1;
        Tensor selected;
        switch (positions.Kind)
        {
            case "last":
                {
                    // One index per row: gather along the position dim.
                    var shape = x.shape;
                    var indexShape = (long[])shape.Clone();
                    indexShape[posDim] = 1;
                    var viewShape = Enumerable.Repeat(1L, shape.Length).ToArray();
                    viewShape[0] = shape[0];
                    var local = (lastRealIndex - positionOffset).clamp_min(0);
                    selected = x.gather(posDim, local.view(viewShape).expand(indexShape));
                    break;
                }
            case "indices":
                {
                    long n = x.shape[posDim];
                    var idx = positions.Indices!.Select(i => (long)(i < 0 ? n + i : i - positionOffset)).ToArray();
                    foreach (var i in idx)
                    {
                        if (i < 0 || i >= n)
                            throw new ArgumentException($"capture position out of range for '{hook.Name}': the sequence has {n + positionOffset} positions");
                    }
                    selected = x.index_select(posDim, tensor(idx, device: x.device));
                    break;
                }
            default:
                selected = x;
                break;
        }
        // A capture must not alias the live activation: later in-place work would change it.
        return ReferenceEquals(selected, x)
            ? (x.dtype == dtype ? x.clone() : x.to(dtype))
            : (selected.dtype == dtype ? selected : selected.to(dtype));
    }
}
