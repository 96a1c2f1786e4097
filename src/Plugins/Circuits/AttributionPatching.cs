using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>
/// Attribution patching (Nanda 2023; AtP, Kramár et al. 2024): the first-order estimate of every
/// node's patching effect, Δm ≈ (a_source − a_base) · ∂m/∂a at the base run, for each head's
/// attn.hook_z (summed over positions and d_head), each hook_mlp_out and each hook_resid_pre
/// position. Two passes over the pairs: one forward of the source prompts (clean, when denoising)
/// with captures, and one forward + backward of the base prompts that returns their activations,
/// metric and gradients together (RunRequest.gradient beside captures). Optionally the
/// top nodes are patched for real and the rank correlation reported.
/// </summary>
internal static class AttributionPatching
{
    private sealed record Node(string Kind, int Layer, int? Head, int? Position);

    public static async Task RunAsync(AttributionPatchingParameters p, IAnalysisContext context, Report report)
    {
        var ct = context.Cancellation;
        var set = await PairSet.LoadAsync(p, context);
        var info = set.Info;
        int nl = info.NLayers, nh = info.NHeads;
        int length = set.CommonLength("attribution patching reports each residual position");
        string Z(int l) => $"blocks.{l}.attn.hook_z";
        string Mlp(int l) => $"blocks.{l}.hook_mlp_out";
        string Resid(int l) => $"blocks.{l}.hook_resid_pre";
        var hooks = Enumerable.Range(0, nl).SelectMany(l => new[] { Z(l), Mlp(l), Resid(l) }).ToList();
        bool denoising = p.Direction == PatchDirection.Denoising;
        int n = set.Pairs.Count;
        var clean = new double[n];
        var corrupt = new double[n];
        var cleanActs = new Dictionary<string, Act>[n];
        var corruptActs = new Dictionary<string, Act>[n];
        var sourceMetric = denoising ? clean : corrupt;
        var baseMetric = denoising ? corrupt : clean;
        var sourceActs = denoising ? cleanActs : corruptActs;
        var baseActs = denoising ? corruptActs : cleanActs;
        // The source prompts (clean when denoising): one forward with captures. The base prompts'
        // activations and metric come with their gradients below, from one forward + backward: two
        // passes over the pairs in all, as the method needs.
        int perSource = Math.Max(1, Math.Min(Calls.RowsPerRun(info, hooks, length, set.MaxBatch), Calls.LogitRows(info)));
        for (int start = 0; start < n; start += perSource)
        {
            var chunk = set.Pairs.Skip(start).Take(perSource).ToList();
            var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            request.Inputs.AddRange(chunk.Select(x => Calls.Tokens(denoising ? x.Clean : x.Corrupted)));
            request.Captures.Add(new Capture { Hooks = { hooks }, Positions = new PositionSelection { All = true } });
            var (captures, result) = await Calls.RunAsync(context.Model, request, ct);
            var logits = Calls.LastLogits(result);
            for (int i = 0; i < chunk.Count; i++)
            {
                sourceMetric[chunk[i].Index] = Calls.Metric(logits[i], chunk[i].Answer, chunk[i].Wrong, p.Metric);
                sourceActs[chunk[i].Index] = captures.ToDictionary(c => c.Key, c => c.Value.Select(0, i), StringComparer.Ordinal);
            }
        }
        context.ReportProgress(0.2, $"{(denoising ? "clean" : "corrupted")} runs of {n} pairs");

        var nodes = new List<Node>();
        for (int l = 0; l < nl; l++)
        {
            nodes.AddRange(Enumerable.Range(0, nh).Select(h => new Node("head", l, h, null)));
            nodes.Add(new Node("mlp", l, null, null));
        }
        for (int l = 0; l < nl; l++)
            nodes.AddRange(Enumerable.Range(0, length).Select(pos => new Node("resid_pre", l, null, pos)));
        var sums = new double[nodes.Count];

        // Captures and gradients of the same hooks: twice the bytes per row.
        int perRun = Math.Min(Calls.LogitRows(info), Calls.RowsPerRun(info, [.. hooks, .. hooks], length, set.MaxBatch));
        for (int start = 0; start < set.Pairs.Count; start += perRun)
        {
            var chunk = set.Pairs.Skip(start).Take(perRun).ToList();
            var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last }, Gradient = Gradient(p.Metric, chunk, hooks) };
            request.Inputs.AddRange(chunk.Select(x => Calls.Tokens(denoising ? x.Corrupted : x.Clean)));
            request.Captures.Add(new Capture { Hooks = { hooks }, Positions = new PositionSelection { All = true } });
            Dictionary<string, Act> gradients, captures;
            RunResult result;
            try
            {
                (captures, gradients, result) = await Calls.RunWithGradientsAsync(context.Model, request, ct);
            }
            catch (Grpc.Core.RpcException e) when (e.StatusCode == Grpc.Core.StatusCode.ResourceExhausted && perRun > 1)
            {
                // Over the server's autograd memory budget for this many rows: halve the batch and retry.
                perRun = Math.Max(1, chunk.Count / 2);
                start -= perRun;
                continue;
            }
            if (gradients.Count == 0)
                throw new InvalidOperationException("the model service returned no gradients; it predates RunRequest.gradient (update it to use attribution_patching)");
            var logits = Calls.LastLogits(result);
            for (int i = 0; i < chunk.Count; i++)
            {
                var pair = chunk[i];
                baseMetric[pair.Index] = Calls.Metric(logits[i], pair.Answer, pair.Wrong, p.Metric);
                var rowActs = baseActs[pair.Index] = captures.ToDictionary(c => c.Key, c => c.Value.Select(0, i), StringComparer.Ordinal);
                var fromActs = sourceActs[pair.Index];
                // The server differentiates logit differences and log-probabilities; prob and loss follow by the chain rule.
                double factor = p.Metric switch
                {
                    CircuitMetric.Prob => Math.Exp(Calls.LogProb(logits[i], pair.Answer)),
                    CircuitMetric.Loss => -1,
                    _ => 1,
                };
                Act Grad(string hook) => gradients.TryGetValue(hook, out var g) ? g.Select(0, i)
                    : throw new InvalidOperationException($"the model service sent no gradient for {hook}");
                for (int l = 0; l < nl; l++)
                {
                    var dz = fromActs[Z(l)] - rowActs[Z(l)]; // [pos, head, d_head]
                    var gz = Grad(Z(l));
                    for (int h = 0; h < nh; h++)
                        sums[Index(nodes, "head", l, h, null)] += factor * dz.Select(1, h).Dot(gz.Select(1, h));
                    sums[Index(nodes, "mlp", l, null, null)] += factor * (fromActs[Mlp(l)] - rowActs[Mlp(l)]).Dot(Grad(Mlp(l)));
                    var dr = fromActs[Resid(l)] - rowActs[Resid(l)];
                    var gr = Grad(Resid(l));
                    for (int pos = 0; pos < length; pos++)
                        sums[Index(nodes, "resid_pre", l, null, pos)] += factor * dr.Select(0, pos).Dot(gr.Select(0, pos));
                }
            }
            context.ReportProgress(0.2 + 0.4 * Math.Min(set.Pairs.Count, start + perRun) / set.Pairs.Count, $"gradients of {Math.Min(set.Pairs.Count, start + perRun)}/{set.Pairs.Count} pairs");
        }
        var baseline = new Baseline { Clean = clean, Corrupt = corrupt, CleanActs = cleanActs, CorruptActs = corruptActs };
        double cleanMean = baseline.CleanMean, corruptMean = baseline.CorruptMean, baseMean = denoising ? corruptMean : cleanMean;
        var estimate = sums.Select(s => s / n).ToArray();
        var normalised = estimate.Select(d => Calls.Normalise(baseMean + d, cleanMean, corruptMean)).ToArray();

        report.Metrics(p.Metric, p.Direction, baseline, n);
        var labels = await Check.PositionLabelsAsync(context.Model, set.Pairs[0].Clean, ct);
        report.Tables.Add(new ResultTable
        {
            Name = "attributions",
            Columns = ["node", "kind", "layer", "head", "position", "token", "estimate", "normalized"],
            Rows = [.. nodes.Select((x, i) => (IReadOnlyList<JsonNode?>)[Label(x), x.Kind, x.Layer, x.Head, x.Position, x.Position is int pos ? labels[pos] : null, estimate[i], ActivationPatching.Json(normalised[i])])],
        });

        var grid = new double[nl, nh + 1];
        var heads = new float[nl * nh];
        var mlp = new float[nl];
        var resid = new float[nl * length];
        var residGrid = new double[nl, length];
        for (int i = 0; i < nodes.Count; i++)
        {
            var x = nodes[i];
            if (x.Kind == "head")
            {
                grid[x.Layer, x.Head!.Value] = normalised[i];
                heads[x.Layer * nh + x.Head.Value] = (float)normalised[i];
            }
            else if (x.Kind == "mlp")
            {
                grid[x.Layer, nh] = normalised[i];
                mlp[x.Layer] = (float)normalised[i];
            }
            else
            {
                residGrid[x.Layer, x.Position!.Value] = normalised[i];
                resid[x.Layer * length + x.Position.Value] = (float)normalised[i];
            }
        }
        var layerLabels = Enumerable.Range(0, nl).Select(l => $"L{l}").ToList();
        report.Heatmap("attribution_heads", "attribution patching: heads and MLPs (normalised estimate)", layerLabels, [.. Enumerable.Range(0, nh).Select(h => $"H{h}"), "mlp"], grid, "layer", "node",
            "first-order estimate of each head's (attn.hook_z) and MLP's patching effect, normalised");
        report.Heatmap("attribution_resid", "attribution patching: resid_pre x position (normalised estimate)", layerLabels, labels, residGrid, "layer", "position",
            "first-order estimate of patching blocks.L.hook_resid_pre at each position, normalised");
        report.Tensor("heads", heads, [nl, nh], "normalised estimate [layer, head]");
        report.Tensor("mlp", mlp, [nl], "normalised estimate [layer]");
        report.Tensor("resid_pre", resid, [nl, length], "normalised estimate [layer, position]");
        report.Summary["top"] = new JsonArray([.. Enumerable.Range(0, nodes.Count).Where(i => nodes[i].Kind != "resid_pre").OrderByDescending(i => Math.Abs(estimate[i])).Take(10)
            .Select(i => (JsonNode)new JsonObject { ["node"] = Label(nodes[i]), ["estimate"] = estimate[i], ["normalized"] = ActivationPatching.Json(normalised[i]) })]);

        if (p.VerifyTop > 0)
        {
            var chosen = Enumerable.Range(0, nodes.Count).Where(i => nodes[i].Kind != "resid_pre").OrderByDescending(i => Math.Abs(estimate[i])).Take(p.VerifyTop).ToList();
            var units = chosen.Select(i => nodes[i].Kind == "head"
                ? new PatchUnit(PatchComponent.Heads, Z(nodes[i].Layer), nodes[i].Layer, nodes[i].Head, null)
                : new PatchUnit(PatchComponent.MlpOut, Mlp(nodes[i].Layer), nodes[i].Layer, null, null)).ToList();
            var actual = (await ActivationPatching.PatchAsync(set, units, baseline, p.Metric, p.Direction, context, 0.6, 0.95)).Select(s => s / n - baseMean).ToArray();
            var est = chosen.Select(i => estimate[i]).ToArray();
            double rho = Spearman(est, actual);
            report.Summary["verified_nodes"] = chosen.Count;
            report.Summary["spearman"] = ActivationPatching.Json(rho);
            report.Tables.Add(new ResultTable
            {
                Name = "verification",
                Columns = ["node", "estimate", "actual", "estimate_normalized", "actual_normalized"],
                Rows = [.. chosen.Select((i, j) => (IReadOnlyList<JsonNode?>)[Label(nodes[i]), est[j], actual[j], ActivationPatching.Json(normalised[i]), ActivationPatching.Json(Calls.Normalise(baseMean + actual[j], cleanMean, corruptMean))])],
            });
        }
    }

    private static string Label(Node x) => x.Kind switch
    {
        "head" => Check.HeadLabel(x.Layer, x.Head!.Value),
        "mlp" => $"L{x.Layer} mlp",
        _ => $"L{x.Layer} resid_pre @{x.Position}",
    };

    private static int Index(List<Node> nodes, string kind, int layer, int? head, int? position) =>
        nodes.FindIndex(x => x.Kind == kind && x.Layer == layer && x.Head == head && x.Position == position);

    /// <summary>The gradient request: per row, the logit difference or the answer's log-probability at the last real token.</summary>
    private static GradientRequest Gradient(CircuitMetric metric, IReadOnlyList<Pair> pairs, IReadOnlyList<string> hooks)
    {
        var g = new GradientRequest { Hooks = { hooks }, Positions = new PositionSelection { All = true } };
        if (metric == CircuitMetric.LogitDiff)
        {
            var diff = new LogitDifference();
            foreach (var x in pairs)
            {
                diff.Correct.Add(new TokenSet { Ids = { x.Answer } });
                diff.Incorrect.Add(new TokenSet { Ids = { x.Wrong } });
            }
            g.LogitDifference = diff;
        }
        else
        {
            g.LogProb = new TokenTarget { Tokens = { pairs.Select(x => x.Answer) } };
        }
        return g;
    }

    /// <summary>Spearman's rank correlation (average ranks for ties); NaN for fewer than 2 values or no spread.</summary>
    internal static double Spearman(IReadOnlyList<double> a, IReadOnlyList<double> b)
    {
        if (a.Count < 2)
            return double.NaN;
        double[] ra = Ranks(a), rb = Ranks(b);
        double ma = ra.Average(), mb = rb.Average(), sab = 0, saa = 0, sbb = 0;
        for (int i = 0; i < ra.Length; i++)
        {
            sab += (ra[i] - ma) * (rb[i] - mb);
            saa += (ra[i] - ma) * (ra[i] - ma);
            sbb += (rb[i] - mb) * (rb[i] - mb);
        }
        return saa == 0 || sbb == 0 ? double.NaN : sab / Math.Sqrt(saa * sbb);
    }

    private static double[] Ranks(IReadOnlyList<double> values)
    {
        var order = Enumerable.Range(0, values.Count).OrderBy(i => values[i]).ToArray();
        var ranks = new double[values.Count];
        for (int i = 0; i < order.Length;)
        {
            int j = i;
            while (j + 1 < order.Length && values[order[j + 1]] == values[order[i]])
                j++;
            for (int k = i; k <= j; k++)
                ranks[order[k]] = (i + j) / 2.0;
            i = j + 1;
        }
        return ranks;
    }
}
