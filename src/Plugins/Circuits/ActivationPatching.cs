using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>One component activation patching replaces: a hook, optionally restricted to a head and a position.</summary>
internal sealed record PatchUnit(PatchComponent Component, string Hook, int Layer, int? Head, int? Position)
{
    /// <summary>The SET that puts the source run's value of this unit into one row of the patched run.</summary>
    public Intervention Set(Dictionary<string, Act> source, int row)
    {
        var act = source[Hook];
        var iv = new Intervention { Hook = Hook, Op = InterventionOp.Set, Rows = { row } };
        Act value;
        switch (Component)
        {
            case PatchComponent.ResidPre or PatchComponent.AttnOut or PatchComponent.MlpOut when Position is null:
                value = act; // [pos, d_model]: every position (attribution patching's MLP nodes)
                break;
            case PatchComponent.ResidPre or PatchComponent.AttnOut or PatchComponent.MlpOut:
                value = act.Select(0, Position!.Value); // [d_model], at one position
                iv.Positions.Add(Position.Value);
                break;
            case PatchComponent.HeadsByPosition:
                value = act.Select(0, Position!.Value).Select(0, Head!.Value, keep: true); // [1, d_head]
                iv.Positions.Add(Position.Value);
                iv.Heads.Add(Head.Value);
                break;
            case PatchComponent.Pattern:
                value = act.Select(0, Head!.Value, keep: true); // [1, query_pos, key_pos]
                iv.Heads.Add(Head.Value);
                break;
            default:
                value = act.Select(1, Head!.Value, keep: true); // [pos, 1, d_head]
                iv.Heads.Add(Head.Value);
                break;
        }
        iv.Value = value.ToProto();
        return iv;
    }
}

/// <summary>
/// Activation patching: run the base prompt (corrupted when denoising, clean when noising), replace
/// one component's activation with the other run's, measure the metric. Each Run carries one pair's
/// base prompt once per unit, each row with its own SET (<c>Intervention.rows</c>), logits last.
/// </summary>
internal static class ActivationPatching
{
    public static string HookOf(PatchComponent c, int layer) => c switch
    {
        PatchComponent.ResidPre => $"blocks.{layer}.hook_resid_pre",
        PatchComponent.AttnOut => $"blocks.{layer}.hook_attn_out",
        PatchComponent.MlpOut => $"blocks.{layer}.hook_mlp_out",
        PatchComponent.Q => $"blocks.{layer}.attn.hook_q",
        PatchComponent.K => $"blocks.{layer}.attn.hook_k",
        PatchComponent.V => $"blocks.{layer}.attn.hook_v",
        PatchComponent.Pattern => $"blocks.{layer}.attn.hook_pattern",
        _ => $"blocks.{layer}.attn.hook_z",
    };

    private static bool ByPosition(PatchComponent c) => c is PatchComponent.ResidPre or PatchComponent.AttnOut or PatchComponent.MlpOut or PatchComponent.HeadsByPosition;

    /// <summary>Heads of a per-head hook: key/value heads for k and v (fewer under grouped-query attention).</summary>
    private static int HeadsOf(PatchComponent c, ModelInfo info) =>
        c is PatchComponent.K or PatchComponent.V && info.NKvHeads > 0 ? info.NKvHeads : info.NHeads;

    public static async Task RunAsync(ActivationPatchingParameters p, IAnalysisContext context, Report report)
    {
        var ct = context.Cancellation;
        var set = await PairSet.LoadAsync(p, context);
        var info = set.Info;
        var layers = Check.Layers(p.Layers, info);
        var components = p.Components.Distinct().ToList();
        int length = set.Pairs[0].Length;
        if (components.FirstOrDefault(ByPosition) is var positional && components.Any(ByPosition))
            length = set.CommonLength($"components {CircuitsPlugin.Snake(positional.ToString())} sweeps positions");

        var units = new List<PatchUnit>();
        foreach (var c in components)
        {
            foreach (int layer in layers)
            {
                string hook = HookOf(c, layer);
                if (c is PatchComponent.ResidPre or PatchComponent.AttnOut or PatchComponent.MlpOut)
                    units.AddRange(Enumerable.Range(0, length).Select(pos => new PatchUnit(c, hook, layer, null, pos)));
                else if (c == PatchComponent.HeadsByPosition)
                    units.AddRange(Enumerable.Range(0, info.NHeads).SelectMany(h => Enumerable.Range(0, length).Select(pos => new PatchUnit(c, hook, layer, h, pos))));
                else
                    units.AddRange(Enumerable.Range(0, HeadsOf(c, info)).Select(h => new PatchUnit(c, hook, layer, h, null)));
            }
        }
        var hooks = units.Select(u => u.Hook).Distinct().ToList();
        var baseline = await Baseline.RunAsync(set, p.Metric, hooks, context);
        context.ReportProgress(0.1, $"clean and corrupted runs of {set.Pairs.Count} pairs");

        var sums = await PatchAsync(set, units, baseline, p.Metric, p.Direction, context, 0.1, 0.9);
        var mean = sums.Select(s => s / set.Pairs.Count).ToArray();
        double clean = baseline.CleanMean, corrupt = baseline.CorruptMean;
        var normalised = mean.Select(m => Calls.Normalise(m, clean, corrupt)).ToArray();

        report.Metrics(p.Metric, p.Direction, baseline, set.Pairs.Count);
        var labels = await Check.PositionLabelsAsync(context.Model, set.Pairs[0].Clean, ct);
        report.Tables.Add(new ResultTable
        {
            Name = "effects",
            Columns = ["component", "hook", "layer", "head", "position", "token", "metric", "normalized"],
            Rows = [.. units.Select((u, i) => (IReadOnlyList<JsonNode?>)[CircuitsPlugin.Snake(u.Component.ToString()), u.Hook, u.Layer, u.Head, u.Position,
                u.Position is int pos ? labels[pos] : null, mean[i], Json(normalised[i])])],
        });
        var top = new JsonArray();
        foreach (var i in Enumerable.Range(0, units.Count).Where(i => double.IsFinite(normalised[i])).OrderByDescending(i => normalised[i]).Take(10))
            top.Add(new JsonObject { ["component"] = CircuitsPlugin.Snake(units[i].Component.ToString()), ["layer"] = units[i].Layer, ["head"] = units[i].Head, ["position"] = units[i].Position, ["normalized"] = normalised[i] });
        report.Summary["top"] = top;

        foreach (var c in components)
        {
            var idx = Enumerable.Range(0, units.Count).Where(i => units[i].Component == c).ToList();
            string name = CircuitsPlugin.Snake(c.ToString());
            var layerLabels = layers.Select(l => $"L{l}").ToList();
            if (c == PatchComponent.HeadsByPosition)
            {
                int h = info.NHeads;
                var grid = new double[layers.Count * h, length];
                foreach (var i in idx)
                    grid[layers.IndexOf(units[i].Layer) * h + units[i].Head!.Value, units[i].Position!.Value] = normalised[i];
                report.Heatmap(name, "heads x position: normalised effect", [.. layers.SelectMany(l => Enumerable.Range(0, h).Select(x => Check.HeadLabel(l, x)))], labels, grid, "head", "position",
                    "normalised effect of patching each head's z at each position");
                report.Tensor(name, [.. idx.Select(i => (float)normalised[i])], [layers.Count, h, length], "normalised effect [layer, head, position]");
            }
            else if (ByPosition(c))
            {
                var grid = new double[layers.Count, length];
                foreach (var i in idx)
                    grid[layers.IndexOf(units[i].Layer), units[i].Position!.Value] = normalised[i];
                report.Heatmap(name, $"{name} x position: normalised effect", layerLabels, labels, grid, "layer", "position",
                    $"normalised effect of patching blocks.L.hook_{name} at each position");
                report.Tensor(name, [.. idx.Select(i => (float)normalised[i])], [layers.Count, length], "normalised effect [layer, position]");
            }
            else
            {
                int h = HeadsOf(c, info);
                var grid = new double[layers.Count, h];
                foreach (var i in idx)
                    grid[layers.IndexOf(units[i].Layer), units[i].Head!.Value] = normalised[i];
                report.Heatmap(name, $"{name} per head: normalised effect", layerLabels, [.. Enumerable.Range(0, h).Select(x => $"H{x}")], grid, "layer", "head",
                    $"normalised effect of patching each head's {HookOf(c, 0)[9..]}");
                report.Tensor(name, [.. idx.Select(i => (float)normalised[i])], [layers.Count, h], "normalised effect [layer, head]");
            }
            report.Tensor($"{name}.metric", [.. idx.Select(i => (float)mean[i])], [.. report.Tensors[name].Shape], "raw metric, same axes");
        }
    }

    internal static JsonNode? Json(double v) => double.IsFinite(v) ? v : null;

    /// <summary>
    /// Patches every unit into every pair's base run; returns the metric summed over pairs per unit.
    /// One Run per pair and max_batch units: identical inputs, one SET per row, logits last, no captures.
    /// </summary>
    public static async Task<double[]> PatchAsync(PairSet set, IReadOnlyList<PatchUnit> units, Baseline baseline, CircuitMetric metric, PatchDirection direction,
        IAnalysisContext context, double progressFrom, double progressTo)
    {
        var sums = new double[units.Count];
        int batch = Math.Min(set.MaxBatch, Calls.LogitRows(set.Info)), done = 0, total = set.Pairs.Count * units.Count;
        foreach (var pair in set.Pairs)
        {
            var source = direction == PatchDirection.Denoising ? baseline.CleanActs[pair.Index] : baseline.CorruptActs[pair.Index];
            var input = Calls.Tokens(direction == PatchDirection.Denoising ? pair.Corrupted : pair.Clean);
            for (int start = 0; start < units.Count; start += batch)
            {
                int n = Math.Min(batch, units.Count - start);
                var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                for (int r = 0; r < n; r++)
                {
                    request.Inputs.Add(input);
                    request.Interventions.Add(units[start + r].Set(source, r));
                }
                var (_, result) = await Calls.RunAsync(context.Model, request, context.Cancellation);
                var logits = Calls.LastLogits(result);
                for (int r = 0; r < n; r++)
                    sums[start + r] += Calls.Metric(logits[r], pair.Answer, pair.Wrong, metric);
                done += n;
                context.ReportProgress(progressFrom + (progressTo - progressFrom) * done / total, $"{pair.Field}: patched {Math.Min(start + n, units.Count)}/{units.Count} components");
            }
        }
        return sums;
    }
}
