using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>
/// Path patching (the IOI paper; TransformerLens' path patching): a sender head's value from the
/// source run reaches only the receivers' chosen input. Step A runs the base prompt with every head's
/// z and every MLP output frozen at the base run's values except the sender's z (one sender per row),
/// capturing the receivers' attn.hook_q/k/v; step B runs the base prompt with only those receivers'
/// q, k or v SET to what step A captured, and measures the metric. For the final residual (resid),
/// step A's own logits are the measurement.
/// </summary>
internal static class PathPatching
{
    private static string Hook(ReceiverInput input, int layer) => $"blocks.{layer}.attn.hook_{CircuitsPlugin.Snake(input.ToString())}";

    public static async Task RunAsync(PathPatchingParameters p, IAnalysisContext context, Report report)
    {
        var ct = context.Cancellation;
        var set = await PairSet.LoadAsync(p, context);
        var info = set.Info;
        int nl = info.NLayers, nh = info.NHeads, kv = info.NKvHeads > 0 ? info.NKvHeads : nh;
        var inputs = p.ReceiverInputs.Distinct().ToList();
        var headInputs = inputs.Where(x => x != ReceiverInput.Resid).ToList();
        var receivers = (p.Receivers ?? []).Select((r, i) => Check.Head(r, info, $"receivers[{i}]")).Distinct().ToList();
        if (headInputs.Count > 0 && receivers.Count == 0)
            throw new InvalidParametersException($"receivers is required for receiver_inputs {string.Join(", ", headInputs.Select(x => CircuitsPlugin.Snake(x.ToString())))}: give the heads whose input is patched, e.g. [{{\"layer\": 1, \"head\": 0}}]");
        int lowest = receivers.Count > 0 ? receivers.Min(r => r.Layer) : nl;
        int highest = receivers.Count > 0 ? receivers.Max(r => r.Layer) : nl;
        var senders = p.Senders is { } given
            ? [.. given.Select((s, i) => Check.Head(s, info, $"senders[{i}]")).Distinct()]
            : Enumerable.Range(0, headInputs.Count > 0 ? lowest : nl).SelectMany(l => Enumerable.Range(0, nh).Select(h => (Layer: l, Head: h))).ToList();
        if (senders.Count == 0)
            throw new InvalidParametersException("senders: no heads lie below the receivers' layer; give senders, or receivers in a later layer");
        if (headInputs.Count > 0)
        {
            for (int i = 0; i < senders.Count; i++)
            {
                if (senders[i].Layer >= highest)
                    throw new InvalidParametersException($"senders[{i}]: {Check.HeadLabel(senders[i].Layer, senders[i].Head)} is not below any receiver (receivers reach up to layer {highest}); a sender must lie in an earlier layer than the heads it sends to");
            }
        }
        int length = set.CommonLength("path patching freezes every position of every head");

        var zHooks = Enumerable.Range(0, nl).Select(l => $"blocks.{l}.attn.hook_z").ToList();
        var mlpHooks = Enumerable.Range(0, nl).Select(l => $"blocks.{l}.hook_mlp_out").ToList();
        var baseline = await Baseline.RunAsync(set, p.Metric, [.. zHooks, .. mlpHooks], context);
        context.ReportProgress(0.1, $"clean and corrupted runs of {set.Pairs.Count} pairs");
        // Receivers' patched inputs: per input kind, (hook, head index on that hook) — kv heads for k and v.
        var targets = headInputs.ToDictionary(x => x, x => receivers
            .Select(r => (Hook: Hook(x, r.Layer), Head: x == ReceiverInput.Q ? r.Head : r.Head / (nh / kv))).Distinct().ToList());
        var captureHooks = targets.Values.SelectMany(t => t.Select(x => x.Hook)).Distinct().ToList();

        var sums = inputs.ToDictionary(x => x, _ => new double[senders.Count]);
        int perRun = Math.Min(Calls.LogitRows(info), Calls.RowsPerRun(info, captureHooks, length, set.MaxBatch));
        int steps = set.Pairs.Count * ((senders.Count + perRun - 1) / perRun), done = 0;
        foreach (var pair in set.Pairs)
        {
            bool denoising = p.Direction == PatchDirection.Denoising;
            var baseActs = denoising ? baseline.CorruptActs[pair.Index] : baseline.CleanActs[pair.Index];
            var sourceActs = denoising ? baseline.CleanActs[pair.Index] : baseline.CorruptActs[pair.Index];
            var input = Calls.Tokens(denoising ? pair.Corrupted : pair.Clean);
            for (int start = 0; start < senders.Count; start += perRun)
            {
                int n = Math.Min(perRun, senders.Count - start);
                // Step A: everything frozen at the base run, the sender's z from the source run (interventions apply in request order).
                var a = new RunRequest { Logits = new LogitsRequest { Mode = inputs.Contains(ReceiverInput.Resid) ? LogitsRequest.Types.Mode.Last : LogitsRequest.Types.Mode.None } };
                for (int r = 0; r < n; r++)
                    a.Inputs.Add(input);
                foreach (var hook in zHooks.Concat(mlpHooks))
                    a.Interventions.Add(new Intervention { Hook = hook, Op = InterventionOp.Set, Value = baseActs[hook].ToProto() });
                for (int r = 0; r < n; r++)
                {
                    var (l, h) = senders[start + r];
                    a.Interventions.Add(new Intervention { Hook = zHooks[l], Op = InterventionOp.Set, Heads = { h }, Rows = { r }, Value = sourceActs[zHooks[l]].Select(1, h, keep: true).ToProto() });
                }
                if (captureHooks.Count > 0)
                    a.Captures.Add(new Capture { Hooks = { captureHooks }, Positions = new PositionSelection { All = true } });
                var (captured, resultA) = await Calls.RunAsync(context.Model, a, ct);
                if (inputs.Contains(ReceiverInput.Resid))
                {
                    var logits = Calls.LastLogits(resultA);
                    for (int r = 0; r < n; r++)
                        sums[ReceiverInput.Resid][start + r] += Calls.Metric(logits[r], pair.Answer, pair.Wrong, p.Metric);
                }
                // Step B: per input kind, only the receivers' q, k or v from step A.
                foreach (var kind in headInputs)
                {
                    var b = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                    for (int r = 0; r < n; r++)
                    {
                        b.Inputs.Add(input);
                        foreach (var (hook, head) in targets[kind])
                            b.Interventions.Add(new Intervention { Hook = hook, Op = InterventionOp.Set, Heads = { head }, Rows = { r }, Value = captured[hook].Select(0, r).Select(1, head, keep: true).ToProto() });
                    }
                    var (_, resultB) = await Calls.RunAsync(context.Model, b, ct);
                    var logits = Calls.LastLogits(resultB);
                    for (int r = 0; r < n; r++)
                        sums[kind][start + r] += Calls.Metric(logits[r], pair.Answer, pair.Wrong, p.Metric);
                }
                done++;
                context.ReportProgress(0.1 + 0.85 * done / steps, $"{pair.Field}: senders {start + n}/{senders.Count}");
            }
        }

        report.Metrics(p.Metric, p.Direction, baseline, set.Pairs.Count);
        double clean = baseline.CleanMean, corrupt = baseline.CorruptMean;
        int np = set.Pairs.Count;
        var rows = new List<IReadOnlyList<JsonNode?>>();
        var grid = new double[senders.Count, inputs.Count];
        var flat = new float[senders.Count * inputs.Count];
        for (int s = 0; s < senders.Count; s++)
        {
            for (int j = 0; j < inputs.Count; j++)
            {
                double m = sums[inputs[j]][s] / np, norm = Calls.Normalise(m, clean, corrupt);
                grid[s, j] = norm;
                flat[s * inputs.Count + j] = (float)norm;
                rows.Add([Check.HeadLabel(senders[s].Layer, senders[s].Head), senders[s].Layer, senders[s].Head, CircuitsPlugin.Snake(inputs[j].ToString()), m, ActivationPatching.Json(norm)]);
            }
        }
        report.Tables.Add(new ResultTable { Name = "path_effects", Columns = ["sender", "sender_layer", "sender_head", "receiver_input", "metric", "normalized"], Rows = rows });
        var inputNames = inputs.Select(x => CircuitsPlugin.Snake(x.ToString())).ToList();
        report.Summary["receivers"] = new JsonArray([.. receivers.Select(r => (JsonNode)Check.HeadLabel(r.Layer, r.Head))]);
        report.Summary["senders"] = senders.Count;
        var byInput = new JsonObject();
        for (int j = 0; j < inputs.Count; j++)
            byInput[inputNames[j]] = Enumerable.Range(0, senders.Count).Select(s => grid[s, j]).Where(double.IsFinite).DefaultIfEmpty(double.NaN).Sum() is var total && double.IsFinite(total) ? total : null;
        report.Summary["total_normalized_by_input"] = byInput;
        report.Heatmap("path_effects", "path patching: normalised effect", [.. senders.Select(s => Check.HeadLabel(s.Layer, s.Head))], inputNames, grid, "sender", "receiver input",
            $"normalised effect of each sender head reaching only the receivers' input ({string.Join(", ", receivers.Select(r => Check.HeadLabel(r.Layer, r.Head)))})");
        report.Tensor("path_effects", flat, [senders.Count, inputs.Count], $"normalised effect [sender, receiver input]; senders {string.Join(" ", senders.Select(s => Check.HeadLabel(s.Layer, s.Head)))}; inputs {string.Join(" ", inputNames)}");
    }
}
