using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.ToyModels.Tasks;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.ToyModels.Analysis;

/// <summary>Attention-pattern scores per head and head ablations, shared by the toy tasks.</summary>
public static class HeadAnalysis
{
    /// <summary>
    /// Mean attention weight each head puts on target key positions, averaged over the query
    /// positions that have a target. <paramref name="target"/>(row, query) returns the key position
    /// (or -1 for a query that does not count). Returns [layer, head].
    /// </summary>
    public static double[,] Score(Transformer model, TokenBatchData data, Func<int, int, int> target)
    {
        var c = model.Config;
        var scores = new double[c.NLayers, c.NHeads];
        using var grad = no_grad();
        using var scope = NewDisposeScope();
        int b = data.Batch, t = data.Length;
        var weight = new float[b * t * t];
        int counted = 0;
        for (int r = 0; r < b; r++)
        {
            for (int q = 0; q < t; q++)
            {
                int k = target(r, q);
                if (k < 0)
                    continue;
                weight[(r * t + q) * t + k] = 1;
                counted++;
            }
        }
        if (counted == 0)
            throw new InvalidOperationException("no query position has a target");
        var targetMask = tensor(weight, [b, 1, t, t]);
        var plan = HookPlan.Build(model.Hooks, [new CaptureRequest(["blocks.*.attn.hook_pattern"])], null);
        model.Forward(tensor(data.Ids, [b, t]), null, plan, (hook, pattern) =>
        {
            int layer = hook.Layer;
            var perHead = Scalars.DivValue((pattern * targetMask).sum([0, 2, 3]), counted);
            var values = perHead.data<float>().ToArray();
            for (int h = 0; h < c.NHeads; h++)
                scores[layer, h] = values[h];
        }, LogitsMode.None);
        return scores;
    }

    /// <summary>A plan that zero-ablates the given heads' outputs (<c>attn.hook_z</c>).</summary>
    public static HookPlan Ablate(Transformer model, IEnumerable<(int Layer, int Head)> heads) =>
        HookPlan.Build(model.Hooks, null, heads.GroupBy(h => h.Layer)
            .Select(g => new Intervention($"blocks.{g.Key}.attn.hook_z", InterventionOp.ZeroAblate, Heads: g.Select(h => h.Head).Distinct().ToList())));

    /// <summary>Heads whose score reaches <paramref name="threshold"/> (at least the best one), best first.</summary>
    public static List<NamedHead> Pick(double[,] scores, IEnumerable<int> layers, double threshold, string role, int max)
    {
        var all = layers.SelectMany(l => Enumerable.Range(0, scores.GetLength(1)).Select(h => new NamedHead(l, h, role, scores[l, h])))
            .OrderByDescending(h => h.Score).ToList();
        var chosen = all.Where(h => h.Score >= threshold).Take(max).ToList();
        return chosen.Count > 0 ? chosen : all.Take(1).ToList();
    }

    /// <summary>
    /// As many heads as <paramref name="named"/>, none of them named, taken layer by layer from
    /// the lowest-scoring ones: the control for an ablation.
    /// </summary>
    public static List<(int Layer, int Head)> Controls(Transformer model, IReadOnlyList<NamedHead> named, Func<int, int, double> score)
    {
        var taken = named.Select(h => (h.Layer, h.Head)).ToHashSet();
        var controls = new List<(int, int)>();
        foreach (var group in named.GroupBy(h => h.Layer))
        {
            controls.AddRange(Enumerable.Range(0, model.Config.NHeads)
                .Where(h => !taken.Contains((group.Key, h)))
                .OrderBy(h => score(group.Key, h))
                .Take(group.Count())
                .Select(h => (group.Key, h)));
        }
        if (controls.Count < named.Count)
        {
            // Not enough other heads in those layers: take the lowest-scoring heads elsewhere.
            controls.AddRange(Enumerable.Range(0, model.Config.NLayers).SelectMany(l => Enumerable.Range(0, model.Config.NHeads).Select(h => (l, h)))
                .Where(x => !taken.Contains(x) && !controls.Contains(x)).OrderBy(x => score(x.l, x.h)).Take(named.Count - controls.Count));
        }
        return controls;
    }

    /// <summary>"L0H1, L1H2" for a list of heads.</summary>
    public static string Labels(IEnumerable<(int Layer, int Head)> heads) => string.Join(", ", heads.Select(h => $"L{h.Layer}H{h.Head}"));

    public static string Table(double[,] scores, string title)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{title} (rows: layer, columns: head)").AppendLine();
        sb.Append("| layer |").AppendJoin("", Enumerable.Range(0, scores.GetLength(1)).Select(h => $" H{h} |")).AppendLine();
        sb.Append("| --- |").AppendJoin("", Enumerable.Range(0, scores.GetLength(1)).Select(_ => " ---: |")).AppendLine();
        for (int l = 0; l < scores.GetLength(0); l++)
            sb.Append($"| {l} |").AppendJoin("", Enumerable.Range(0, scores.GetLength(1)).Select(h => $" {scores[l, h]:F2} |")).AppendLine();
        return sb.ToString();
    }

    /// <summary>
    /// The model card's causal-check table: a heading line, then one row per condition with the
    /// task's accuracy under it, and a last row for chance.
    /// </summary>
    public static string CausalChecks(string heading, string metric, IEnumerable<(string Condition, double Accuracy)> rows, double chance)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine(heading).AppendLine();
        sb.AppendLine($"| condition | {metric} |").AppendLine("| --- | ---: |");
        foreach (var (condition, accuracy) in rows)
            sb.AppendLine($"| {condition} | {accuracy:P1} |");
        sb.AppendLine($"| chance | {chance:P1} |");
        return sb.ToString();
    }
}
