using InterpMesh.Runtime.Execution;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Hooks;

/// <summary>What one intervention actually did over a request: the hooks it matched, how many
/// activation elements it changed (new value ≠ old value) and the L2 norm of the change. For a
/// generation, counts are summed over steps and the norm is the sum of each step's norm.</summary>
/// <param name="Index">Position of the intervention in the request.</param>
/// <param name="Hook">The name or glob the request gave.</param>
/// <param name="Hooks">Hook points it matched.</param>
/// <param name="Elements">Elements whose value it changed.</param>
/// <param name="L2">L2 norm of (new − old) over those elements (summed per step for generation).</param>
public sealed record InterventionReceipt(int Index, string Hook, IReadOnlyList<string> Hooks, long Elements, double L2);

/// <summary>
/// Accumulates <see cref="InterventionReceipt"/>s for one request across forwards. Torch-thread only.
/// </summary>
public sealed class InterventionReceipts
{
    private readonly Dictionary<Intervention, int> index = new(ReferenceEqualityComparer.Instance);
    private readonly IReadOnlyList<InterventionTarget> targets;
    private readonly long[] elements;
    private readonly double[] stepSquares;
    private readonly double[] norms;

    public InterventionReceipts(HookPlan plan)
    {
        targets = plan.Targets;
        for (int i = 0; i < targets.Count; i++)
            index[targets[i].Intervention] = i;
        elements = new long[targets.Count];
        stepSquares = new double[targets.Count];
        norms = new double[targets.Count];
    }

    /// <summary>
    /// Counts what <paramref name="standIn"/> does as the work of <paramref name="original"/>, an
    /// intervention of this plan (the engine re-targets an intervention to a subset of rows this way).
    /// </summary>
    public void Alias(Intervention standIn, Intervention original)
    {
        if (!index.TryGetValue(original, out int i))
            throw new ArgumentException("the intervention is not part of this plan", nameof(original));
        index[standIn] = i;
    }

    /// <summary>Records one application: <paramref name="before"/> became <paramref name="after"/>.</summary>
    internal void Record(Intervention iv, Tensor before, Tensor after)
    {
        if (!index.TryGetValue(iv, out int i))
            return;
        using var scope = NewDisposeScope();
        // Compared, not subtracted: a masked attention score stays −∞ (−∞ − −∞ would be NaN and
        // count as changed, with a NaN norm).
        var changed = after.ne(before);
        var diff = (after.to(ScalarType.Float64) - before.to(ScalarType.Float64)).masked_fill(changed.logical_not(), Scalars.ZeroReal);
        elements[i] += changed.sum().item<long>();
        stepSquares[i] += diff.square().sum().item<double>();
    }

    /// <summary>Closes one forward (one generation step): its norm is added to each total.</summary>
    public void EndStep()
    {
        for (int i = 0; i < norms.Length; i++)
        {
            norms[i] += Math.Sqrt(stepSquares[i]);
            stepSquares[i] = 0;
        }
    }

    /// <summary>The receipts so far, in request order.</summary>
    public IReadOnlyList<InterventionReceipt> Snapshot() =>
        targets.Select((t, i) => new InterventionReceipt(i, t.Intervention.Hook, t.Hooks, elements[i], norms[i] + Math.Sqrt(stepSquares[i]))).ToList();
}

/// <summary>An intervention of a plan with the hook points its name or glob resolved to.</summary>
public sealed record InterventionTarget(Intervention Intervention, IReadOnlyList<string> Hooks);
