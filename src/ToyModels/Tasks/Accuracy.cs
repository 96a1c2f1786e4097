using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.ToyModels.Tasks;

/// <summary>Greedy next-token accuracy at the positions a batch marks with a target.</summary>
internal static class Accuracy
{
    /// <summary>Fraction of target positions where the argmax token equals the target.</summary>
    public static double Argmax(Transformer model, HookPlan? plan, TokenBatchData data) =>
        InSet(model, plan, data, i => new HashSet<long> { data.Targets[i] });

    /// <summary>Fraction of target positions where the argmax token lies in the allowed set for that position.</summary>
    public static double InSet(Transformer model, HookPlan? plan, TokenBatchData data, Func<int, IReadOnlySet<long>> allowed)
    {
        using var grad = no_grad();
        using var scope = NewDisposeScope();
        var logits = model.Forward(tensor(data.Ids, [data.Batch, data.Length]), null, plan ?? HookPlan.Empty, null, LogitsMode.All)!;
        var predicted = logits.argmax(-1).data<long>().ToArray();
        int total = 0, correct = 0;
        for (int i = 0; i < data.Targets.Length; i++)
        {
            if (data.Targets[i] < 0)
                continue;
            total++;
            if (allowed(i).Contains(predicted[i]))
                correct++;
        }
        return total == 0 ? double.NaN : (double)correct / total;
    }
}
