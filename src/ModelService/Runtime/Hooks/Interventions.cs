using InterpMesh.Runtime.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Hooks;

/// <summary>What an intervention does to the selected part of a hook's tensor.</summary>
public enum InterventionOp
{
    /// <summary>x + value (steering).</summary>
    Add,
    /// <summary>value replaces x (activation patching).</summary>
    Set,
    /// <summary>x * scale.</summary>
    Scale,
    /// <summary>0 replaces x.</summary>
    ZeroAblate,
    /// <summary>value (a caller-supplied mean) replaces x.</summary>
    MeanAblate,
}

/// <summary>
/// A change to one hook point (or every hook a glob matches), optionally restricted to some heads
/// and some positions. <see cref="Value"/> must broadcast against the hook's tensor (after head and
/// position restriction it still broadcasts against the full tensor: e.g. <c>[d_model]</c> for a
/// residual stream, <c>[d_head]</c> or <c>[head, d_head]</c> for <c>hook_z</c>, or the full
/// <c>[batch, pos, …]</c> activations of another run for patching).
/// </summary>
/// <param name="Hook">Exact hook name or glob.</param>
/// <param name="Op">The operation.</param>
/// <param name="Value">Vector or tensor for Add, Set and MeanAblate; ignored otherwise.</param>
/// <param name="Scale">Factor for Scale.</param>
/// <param name="Heads">Head indices to touch (hooks with a head dimension only); null = all heads.</param>
/// <param name="Positions">Absolute sequence positions to touch (query positions for attention maps); null = all.</param>
/// <param name="Rows">Rows of the request's batch to touch; null = all.</param>
public sealed record Intervention(
    string Hook,
    InterventionOp Op,
    Tensor? Value = null,
    double Scale = 1.0,
    IReadOnlyList<int>? Heads = null,
    IReadOnlyList<int>? Positions = null,
    IReadOnlyList<int>? Rows = null)
{
    internal Tensor Apply(HookInfo hook, Tensor x, int positionOffset)
    {
        if (Heads is not null && hook.Layout == HookLayout.Positional)
            throw new InvalidRequestException($"intervention on '{hook.Name}' names heads, but that hook has no head dimension; per-head hooks are attn.hook_q/k/v/z/result/pattern/attn_scores");
        if (Op is InterventionOp.Add or InterventionOp.Set or InterventionOp.MeanAblate && Value is null)
            throw new InvalidRequestException($"intervention {Op} on '{hook.Name}' needs a value tensor");

        using var scope = NewDisposeScope();
        Tensor? selection = Selection(hook, x, positionOffset);
        Tensor value = Op switch
        {
            InterventionOp.Add or InterventionOp.Set or InterventionOp.MeanAblate => Value!.to(x.dtype, x.device),
            _ => x,
        };
        if (Op is InterventionOp.Add or InterventionOp.Set or InterventionOp.MeanAblate)
            CheckBroadcast(hook, x, value);

        Tensor result = Op switch
        {
            InterventionOp.Add => Scalars.Add(x, selection is null ? value : value * selection),
            InterventionOp.Set or InterventionOp.MeanAblate => selection is null ? value.expand(x.shape).clone() : torch.where(selection, value, x),
            InterventionOp.Scale => selection is null ? Scalars.MulValue(x, Scale) : torch.where(selection, Scalars.MulValue(x, Scale), x),
            InterventionOp.ZeroAblate => selection is null ? zeros_like(x) : x.masked_fill(selection.expand(x.shape), Scalars.Zero),
            _ => throw new InvalidOperationException($"unknown intervention operation {Op}"),
        };
        return result.MoveToOuterDisposeScope();
    }

    private static void CheckBroadcast(HookInfo hook, Tensor x, Tensor value)
    {
        if (!BroadcastsTo(value.shape, x.shape))
            throw new InvalidRequestException($"intervention value of shape [{string.Join(", ", value.shape)}] does not broadcast to '{hook.Name}' of shape [{string.Join(", ", x.shape)}] ({hook.Shape})");
    }

    /// <summary>Whether a value of shape <paramref name="value"/> broadcasts to an activation of shape <paramref name="target"/>.</summary>
    public static bool BroadcastsTo(IReadOnlyList<long> value, IReadOnlyList<long> target)
    {
        if (value.Count > target.Count)
            return false;
        for (int i = 1; i <= value.Count; i++)
        {
            if (value[^i] != 1 && value[^i] != target[^i])
                return false;
        }
        return true;
    }

    /// <summary>A boolean mask broadcastable to x marking the touched elements, or null for all of them.</summary>
    private Tensor? Selection(HookInfo hook, Tensor x, int positionOffset)
    {
        if (Heads is null && Positions is null && Rows is null)
            return null;
        int rank = (int)x.dim();
        var shape = Enumerable.Repeat(1L, rank).ToArray();
        Tensor mask = ones(shape, ScalarType.Bool, x.device);
        if (Rows is not null)
        {
            long n = x.shape[0];
            foreach (var r in Rows)
            {
                if (r < 0 || r >= n)
                    throw new InvalidRequestException($"row {r} is out of range for '{hook.Name}': the request has {n} rows");
            }
            var sel = zeros(n, ScalarType.Bool, x.device);
            sel.index_put_(tensor(true), tensor(Rows.Select(r => (long)r).ToArray(), device: x.device));
            var s = (long[])shape.Clone();
            s[0] = n;
            mask = mask.logical_and(sel.reshape(s));
        }
        if (Heads is not null)
        {
            int headDim = hook.Layout == HookLayout.AttentionMap ? 1 : 2;
            long n = x.shape[headDim];
            foreach (var h in Heads)
            {
                if (h < 0 || h >= n)
                    throw new InvalidRequestException($"head {h} is out of range for '{hook.Name}' which has {n} heads");
            }
            var sel = zeros(n, ScalarType.Bool, x.device);
            sel.index_put_(tensor(true), tensor(Heads.Select(h => (long)h).ToArray(), device: x.device));
            var s = (long[])shape.Clone();
            s[headDim] = n;
            mask = mask.logical_and(sel.reshape(s));
        }
        if (Positions is not null)
        {
            int posDim = hook.Layout == HookLayout.AttentionMap ? 2 : 1;
            long n = x.shape[posDim];
            var sel = zeros(n, ScalarType.Bool, x.device);
            var local = Positions.Select(p => (long)p - positionOffset).Where(p => p >= 0 && p < n).ToArray();
            if (Positions.Any(p => p < 0))
                throw new InvalidRequestException($"intervention on '{hook.Name}' has a negative position; positions are absolute indices into the (padded) sequence");
            if (local.Length > 0)
                sel.index_put_(tensor(true), tensor(local, device: x.device));
            var s = (long[])shape.Clone();
            s[posDim] = n;
            mask = mask.logical_and(sel.reshape(s));
        }
        return mask;
    }
}
