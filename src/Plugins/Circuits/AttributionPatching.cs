using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using TorchSharp;

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
        var nodes = new List<Node>();
        for (int l = 0; l < nl; l++)
        {
            nodes.AddRange(Enumerable.Range(0, nh).Select(h => new Node("head", l, h, null)));
            nodes.Add(new Node("mlp", l, null, null));
        }
        for (int l = 0; l < nl; l++)
            nodes.AddRange(Enumerable.Range(0, length).Select(pos => new Node("resid_pre", l, null, pos)));
        var sums = new double[nodes.Count];

        var clean = new double[n];
        var corrupt = new double[n];
        var sourceMetric = denoising ? clean : corrupt;
        var baseMetric = denoising ? corrupt : clean;
        // Only a verification patches for real, and only it needs every pair's activations kept as arrays.
        bool verify = p.VerifyTop > 0;
        var cleanActs = new Dictionary<string, Act>[n];
        var corruptActs = new Dictionary<string, Act>[n];
        var sourceActs = denoising ? cleanActs : corruptActs;
        var baseActs = denoising ? corruptActs : cleanActs;
        // The source prompts (clean when denoising): one forward with captures, kept as tensors
        // [pairs, ...] per hook. The base prompts' activations and metric come with their gradients
        // below, from one forward + backward: two passes over the pairs in all, as the method needs.
        var source = new Dictionary<string, torch.Tensor>(StringComparer.Ordinal);
        try
        {
            int perSource = Math.Max(1, Math.Min(Calls.RowsPerRun(info, hooks, length, set.MaxBatch), Calls.LogitRows(info)));
            var parts = hooks.ToDictionary(h => h, _ => new List<torch.Tensor>(), StringComparer.Ordinal);
            try
            {
                for (int start = 0; start < n; start += perSource)
                {
                    var chunk = set.Pairs.Skip(start).Take(perSource).ToList();
                    var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                    request.Inputs.AddRange(chunk.Select(x => Calls.Tokens(denoising ? x.Clean : x.Corrupted)));
                    request.Captures.Add(new Capture { Hooks = { hooks }, Positions = new PositionSelection { All = true } });
                    var (captures, _, result) = await Calls.RunTensorsAsync(context.Model, request, ct);
                    foreach (var (hook, t) in captures)
                    {
                        if (parts.TryGetValue(hook, out var list))
                            list.Add(t);
                        else
                            t.Dispose();
                    }
                    var logits = Calls.LastLogits(result);
                    for (int i = 0; i < chunk.Count; i++)
                        sourceMetric[chunk[i].Index] = Calls.Metric(logits[i], chunk[i].Answer, chunk[i].Wrong, p.Metric);
                }
                foreach (var (hook, list) in parts)
                {
                    if (list.Count == 0)
                        throw new InvalidOperationException($"the model service sent no capture of {hook}");
                    source[hook] = list.Count == 1 ? list[0] : torch.cat(list, 0);
                    if (list.Count == 1)
                        list.Clear(); // kept in source; not disposed below
                }
            }
            finally
            {
                foreach (var t in parts.Values.SelectMany(x => x))
                    t.Dispose();
            }
            if (verify)
            {
                for (int i = 0; i < n; i++)
                    sourceActs[set.Pairs[i].Index] = source.ToDictionary(c => c.Key, c => RowAct(c.Value, i), StringComparer.Ordinal);
            }
            context.ReportProgress(0.2, $"{(denoising ? "clean" : "corrupted")} runs of {n} pairs");

            // Per node kind, the sum over pairs of factor · (a_source − a_base) · ∂m/∂a.
            var headSums = new double[nl, nh];
            var mlpSums = new double[nl];
            var residSums = new double[nl, length];

            // Captures and gradients of the same hooks: twice the bytes per row.
            int perRun = Math.Min(Calls.LogitRows(info), Calls.RowsPerRun(info, [.. hooks, .. hooks], length, set.MaxBatch));
            for (int start = 0; start < n; start += perRun)
            {
                var chunk = set.Pairs.Skip(start).Take(perRun).ToList();
                var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last }, Gradient = Gradient(p.Metric, chunk, hooks) };
                request.Inputs.AddRange(chunk.Select(x => Calls.Tokens(denoising ? x.Corrupted : x.Clean)));
                request.Captures.Add(new Capture { Hooks = { hooks }, Positions = new PositionSelection { All = true } });
                Dictionary<string, torch.Tensor> gradients, captures;
                RunResult result;
                try
                {
                    (captures, gradients, result) = await Calls.RunTensorsAsync(context.Model, request, ct);
                }
                catch (Grpc.Core.RpcException e) when (e.StatusCode == Grpc.Core.StatusCode.ResourceExhausted && perRun > 1)
                {
                    // Over the server's autograd memory budget for this many rows: halve the batch and retry.
                    perRun = Math.Max(1, chunk.Count / 2);
                    start -= perRun;
                    continue;
                }
                try
                {
                    if (gradients.Count == 0)
                        throw new InvalidOperationException("the model service returned no gradients; it predates RunRequest.gradient (update it to use attribution_patching)");
                    var logits = Calls.LastLogits(result);
                    // The server differentiates logit differences and log-probabilities; prob and loss follow by the chain rule.
                    var factors = new double[chunk.Count];
                    for (int i = 0; i < chunk.Count; i++)
                    {
                        var pair = chunk[i];
                        baseMetric[pair.Index] = Calls.Metric(logits[i], pair.Answer, pair.Wrong, p.Metric);
                        factors[i] = p.Metric switch
                        {
                            CircuitMetric.Prob => Math.Exp(Calls.LogProb(logits[i], pair.Answer)),
                            CircuitMetric.Loss => -1,
                            _ => 1,
                        };
                        if (verify)
                            baseActs[pair.Index] = captures.ToDictionary(c => c.Key, c => RowAct(c.Value, i), StringComparer.Ordinal);
                    }
                    using var factor = torch.tensor(factors, torch.ScalarType.Float64);
                    int first = start;
                    // Σ_rows factor · Σ_(summed dims) (a_source − a_base) ∂m/∂a: one tensor expression per hook.
                    double[] Attribute(string hook, long[] summed)
                    {
                        var b = captures.TryGetValue(hook, out var x) ? x : throw new InvalidOperationException($"the model service sent no capture of {hook}");
                        var g = gradients.TryGetValue(hook, out var y) ? y : throw new InvalidOperationException($"the model service sent no gradient for {hook}");
                        using var scope = torch.NewDisposeScope();
                        var a = source[hook].narrow(0, first, chunk.Count);
                        var perRow = (a - b).mul_(g).to(torch.ScalarType.Float64).sum(summed); // [rows, rest...]
                        long[] shape = [chunk.Count, .. Enumerable.Repeat(1L, (int)perRow.dim() - 1)];
                        var total = perRow.mul_(factor.reshape(shape)).sum(dim: [0L]); // not sum(0): a literal 0 converts to ScalarType.Byte
                        return total.contiguous().data<double>().ToArray();
                    }
                    for (int l = 0; l < nl; l++)
                    {
                        var perHead = Attribute(Z(l), [1, 3]); // z [rows, pos, head, d_head] → [head]
                        for (int h = 0; h < nh; h++)
                            headSums[l, h] += perHead[h];
                        mlpSums[l] += Attribute(Mlp(l), [1, 2])[0]; // [rows, pos, d_model] → []
                        var perPosition = Attribute(Resid(l), [2]); // [rows, pos, d_model] → [pos]
                        for (int pos = 0; pos < length; pos++)
                            residSums[l, pos] += perPosition[pos];
                    }
                }
                finally
                {
                    foreach (var t in captures.Values.Concat(gradients.Values))
                        t.Dispose();
                }
                context.ReportProgress(0.2 + 0.4 * Math.Min(n, start + perRun) / n, $"gradients of {Math.Min(n, start + perRun)}/{n} pairs");
            }
            for (int i = 0; i < nodes.Count; i++)
            {
                var x = nodes[i];
                sums[i] = x.Kind switch
                {
                    "head" => headSums[x.Layer, x.Head!.Value],
                    "mlp" => mlpSums[x.Layer],
                    _ => residSums[x.Layer, x.Position!.Value],
                };
            }
        }
        finally
        {
            foreach (var t in source.Values)
                t.Dispose();
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

    /// <summary>Row <paramref name="row"/> of a [rows, ...] tensor as an array.</summary>
    private static Act RowAct(torch.Tensor t, int row)
    {
        using var r = t.select(0, row);
        return Act.Of(r);
    }

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
