using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>
/// Direct logit attribution at the last position of each clean prompt: the final residual stream is
/// the sum of the embeddings, every head's <c>attn.hook_result</c>, each layer's attention bias term
/// (<c>hook_attn_out</c> − Σ heads) and every <c>hook_mlp_out</c>; each part goes through the final
/// norm with its scale frozen at the real run's (<c>ln_final.hook_scale</c>; LayerNorm: each part
/// centred), the gain <c>ln_final.w</c>, and is projected on W_U[:, answer] − W_U[:, wrong]. The
/// norm's bias and b_U give the bias term; parts + bias term = the real logit difference.
/// </summary>
internal static class DirectLogitAttribution
{
    private sealed record Part(string Name, string Kind, int? Layer, int? Head);

    public static async Task RunAsync(DirectLogitAttributionParameters p, IAnalysisContext context, Report report)
    {
        var ct = context.Cancellation;
        var set = await PairSet.LoadAsync(p, context, needCorrupted: false);
        var info = set.Info;
        int nl = info.NLayers, nh = info.NHeads;
        bool posEmbed = info.Hooks.Any(h => h.Name == "hook_pos_embed");
        string final = $"blocks.{nl - 1}.hook_resid_post";
        var hooks = new List<string> { "hook_embed" };
        if (posEmbed)
            hooks.Add("hook_pos_embed");
        for (int l = 0; l < nl; l++)
            hooks.AddRange([$"blocks.{l}.attn.hook_result", $"blocks.{l}.hook_attn_out", $"blocks.{l}.hook_mlp_out"]);
        hooks.AddRange(["ln_final.hook_scale", "ln_final.hook_normalized", final]);

        // Weights: the final norm's gain (and bias), the unembedding (and its bias).
        var weights = new Dictionary<string, Act>(StringComparer.Ordinal);
        await foreach (var w in context.Model.GetWeightsAsync(["ln_final.*", "unembed.*"], cancellationToken: ct))
        {
            using (w.Tensor)
                weights[w.Name] = Act.Of(w.Tensor);
        }
        var gain = weights.TryGetValue("ln_final.w", out var g) ? g.Data : throw new InvalidOperationException("the model service sent no ln_final.w");
        var normBias = weights.TryGetValue("ln_final.b", out var nb) ? nb.Data : null;
        var wu = weights["unembed.W_U"];
        var bu = weights.TryGetValue("unembed.b_U", out var b) ? b.Data : null;
        int d = info.DModel, vocab = (int)wu.Shape[1];
        context.ReportProgress(0.1, "final norm and unembedding weights");

        // A soft-capped model's logits are c·tanh(z/c): the parts add up to z, so the logit
        // difference attributed is z's, recovered from the real logits.
        double cap = info.FinalLogitSoftcap;
        double Uncapped(float logit) => cap > 0 ? cap * Math.Atanh(Math.Clamp(logit / cap, -1 + 1e-7, 1 - 1e-7)) : logit;

        var parts = new List<Part> { new("embed", "embed", null, null) };
        if (posEmbed)
            parts.Add(new("pos_embed", "embed", null, null));
        for (int l = 0; l < nl; l++)
        {
            parts.AddRange(Enumerable.Range(0, nh).Select(h => new Part(Check.HeadLabel(l, h), "head", l, h)));
            parts.Add(new($"L{l} attn bias", "attn_bias", l, null));
            parts.Add(new($"L{l} mlp", "mlp", l, null));
        }
        var sums = new double[parts.Count];
        double biasSum = 0, realSum = 0, maxError = 0, maxDecomposition = 0;
        bool? centred = null;
        var perPair = new List<IReadOnlyList<JsonNode?>>();
        foreach (var group in set.Pairs.GroupBy(x => x.Length))
        {
            var pairs = group.ToList();
            int perRun = Math.Min(Calls.LogitRows(info), Calls.RowsPerRun(info, hooks, 1, set.MaxBatch));
            for (int start = 0; start < pairs.Count; start += perRun)
            {
                var chunk = pairs.Skip(start).Take(perRun).ToList();
                var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                request.Inputs.AddRange(chunk.Select(x => Calls.Tokens(x.Clean)));
                request.Captures.Add(new Capture { Hooks = { hooks }, Positions = new PositionSelection { Last = true } });
                var (acts, result) = await Calls.RunAsync(context.Model, request, ct);
                var logits = Calls.LastLogits(result);
                for (int i = 0; i < chunk.Count; i++)
                {
                    var pair = chunk[i];
                    Act Row(string hook) => acts[hook].Select(0, i).Select(0, 0); // last position: [d_model] or [head, d_model]
                    double scale = Row("ln_final.hook_scale").Data[0];
                    var x = Row(final);
                    // RMSNorm or LayerNorm: which one the model's own normalized output matches.
                    if (centred is null)
                    {
                        var normalized = Row("ln_final.hook_normalized").Data;
                        double mu = x.Data.Average();
                        double errPlain = 0, errCentred = 0;
                        for (int j = 0; j < d; j++)
                        {
                            errPlain += Math.Abs(normalized[j] - x.Data[j] / scale);
                            errCentred += Math.Abs(normalized[j] - (x.Data[j] - mu) / scale);
                        }
                        centred = errCentred < errPlain;
                    }
                    // direction[j] = w[j] · (W_U[j, answer] − W_U[j, wrong]) / scale
                    var direction = new double[d];
                    for (int j = 0; j < d; j++)
                        direction[j] = gain[j] * ((double)wu.Data[(long)j * vocab + pair.Answer] - wu.Data[(long)j * vocab + pair.Wrong]) / scale;
                    double Project(float[] c)
                    {
                        double mu = centred == true ? c.Average(v => (double)v) : 0, s = 0;
                        for (int j = 0; j < d; j++)
                            s += (c[j] - mu) * direction[j];
                        return s;
                    }
                    var values = new double[parts.Count];
                    var total = new double[d];
                    void Add(int index, float[] c)
                    {
                        values[index] = Project(c);
                        for (int j = 0; j < d; j++)
                            total[j] += c[j];
                    }
                    int k = 0;
                    Add(k++, Row("hook_embed").Data);
                    if (posEmbed)
                        Add(k++, Row("hook_pos_embed").Data);
                    for (int l = 0; l < nl; l++)
                    {
                        var result3 = Row($"blocks.{l}.attn.hook_result"); // [head, d_model]
                        var attnOut = Row($"blocks.{l}.hook_attn_out").Data;
                        var rest = (float[])attnOut.Clone();
                        for (int h = 0; h < nh; h++)
                        {
                            var head = result3.Select(0, h).Data;
                            Add(k++, head);
                            for (int j = 0; j < d; j++)
                                rest[j] -= head[j];
                        }
                        Add(k++, rest);
                        Add(k++, Row($"blocks.{l}.hook_mlp_out").Data);
                    }
                    double bias = (bu is null ? 0 : (double)bu[pair.Answer] - bu[pair.Wrong]);
                    if (normBias is not null)
                    {
                        for (int j = 0; j < d; j++)
                            bias += normBias[j] * ((double)wu.Data[(long)j * vocab + pair.Answer] - wu.Data[(long)j * vocab + pair.Wrong]);
                    }
                    double real = Uncapped(logits[i][pair.Answer]) - Uncapped(logits[i][pair.Wrong]);
                    double sum = values.Sum() + bias;
                    double decomposition = 0;
                    for (int j = 0; j < d; j++)
                        decomposition = Math.Max(decomposition, Math.Abs(total[j] - x.Data[j]));
                    maxError = Math.Max(maxError, Math.Abs(real - sum));
                    maxDecomposition = Math.Max(maxDecomposition, decomposition);
                    for (int j = 0; j < parts.Count; j++)
                        sums[j] += values[j];
                    biasSum += bias;
                    realSum += real;
                    perPair.Add([pair.Index, real, sum, bias, real - sum, decomposition]);
                }
            }
        }
        int n = set.Pairs.Count;
        var mean = sums.Select(s => s / n).ToArray();
        report.Summary["pairs"] = n;
        report.Summary["metric"] = "logit_diff";
        if (cap > 0)
            report.Summary["logits"] = $"before final_logit_softcapping ({cap.ToString(System.Globalization.CultureInfo.InvariantCulture)}): the model's logits are c·tanh(z/c), and the parts add up to z";
        report.Summary["logit_diff"] = realSum / n;
        report.Summary["sum_of_parts"] = mean.Sum() + biasSum / n;
        report.Summary["bias_term"] = biasSum / n;
        report.Summary["max_abs_error"] = maxError;
        report.Summary["max_residual_decomposition_error"] = maxDecomposition;
        report.Summary["norm"] = centred == true ? "layer_norm (parts centred)" : "rms_norm";
        report.Summary["top"] = new JsonArray([.. Enumerable.Range(0, parts.Count).OrderByDescending(i => Math.Abs(mean[i])).Take(p.Top)
            .Select(i => (JsonNode)new JsonObject { ["component"] = parts[i].Name, ["contribution"] = mean[i] })]);
        var tableRows = parts.Select((x, i) => (IReadOnlyList<JsonNode?>)[x.Name, x.Kind, x.Layer, x.Head, mean[i]]).ToList();
        tableRows.Add(["bias term", "bias", null, null, biasSum / n]);
        report.Tables.Add(new ResultTable { Name = "dla", Columns = ["component", "kind", "layer", "head", "contribution"], Rows = tableRows });
        report.Tables.Add(new ResultTable { Name = "per_pair", Columns = ["pair", "logit_diff", "sum_of_parts", "bias_term", "error", "residual_decomposition_error"], Rows = perPair });

        var grid = new double[nl, nh + 2];
        var heads = new float[nl * nh];
        var mlp = new float[nl];
        var attnBias = new float[nl];
        for (int i = 0; i < parts.Count; i++)
        {
            if (parts[i].Layer is not int l)
                continue;
            int column = parts[i].Kind == "head" ? parts[i].Head!.Value : parts[i].Kind == "attn_bias" ? nh : nh + 1;
            grid[l, column] = mean[i];
            if (parts[i].Kind == "head")
                heads[l * nh + parts[i].Head!.Value] = (float)mean[i];
            else if (parts[i].Kind == "mlp")
                mlp[l] = (float)mean[i];
            else
                attnBias[l] = (float)mean[i];
        }
        report.Heatmap("dla", "direct logit attribution", [.. Enumerable.Range(0, nl).Select(l => $"L{l}")], [.. Enumerable.Range(0, nh).Select(h => $"H{h}"), "attn bias", "mlp"],
            grid, "layer", "component", "each head's and MLP's direct contribution to logit(answer) − logit(wrong), mean over pairs");
        report.Tensor("heads", heads, [nl, nh], "direct logit attribution [layer, head]");
        report.Tensor("mlp", mlp, [nl], "direct logit attribution [layer]");
        report.Tensor("attn_bias", attnBias, [nl], "attention bias term (attn_out − Σ heads) [layer]");
        report.Tensor("embed", [.. parts.Select((x, i) => (x, i)).Where(t => t.x.Kind == "embed").Select(t => (float)mean[t.i])], [posEmbed ? 2 : 1], "embed (and pos_embed)");
    }
}
