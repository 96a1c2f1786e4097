using System.Text.Json.Nodes;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>
/// The logit lens, exact for every family: the residual stream after each layer is SET as the last
/// block's <c>hook_resid_post</c> of one row of a Run of the clean prompt (rows = layers), so the
/// model itself applies its final norm, unembedding (and any soft-cap): no per-family norm code.
/// The last layer's row is the model's own forward.
/// </summary>
internal static class LogitLens
{
    public static async Task RunAsync(LogitLensParameters p, IAnalysisContext context, Report report)
    {
        var ct = context.Cancellation;
        var set = await PairSet.LoadAsync(p, context, needCorrupted: false, needWrong: false);
        var info = set.Info;
        int nl = info.NLayers;
        string final = $"blocks.{nl - 1}.hook_resid_post";
        // Lens rows: layer -1 (blocks.0.hook_resid_pre: the embeddings) when asked, then every block's output.
        var lens = new List<(int Layer, string Hook)>();
        if (p.IncludeEmbeddings)
            lens.Add((-1, "blocks.0.hook_resid_pre"));
        lens.AddRange(Enumerable.Range(0, nl).Select(l => (l, $"blocks.{l}.hook_resid_post")));
        int k = Math.Min(p.TopK, info.VocabSize);

        var rows = new List<IReadOnlyList<JsonNode?>>();
        double maxDiff = 0;
        var lastAnswerProb = new double[lens.Count];
        for (int pi = 0; pi < set.Pairs.Count; pi++)
        {
            var pair = set.Pairs[pi];
            int t = pair.Length;
            var positions = Positions(p.Positions, t, pair.Field);
            // The lens at a position reads only the tokens up to it (causal attention): the lens Runs stop at the last
            // position reported, which keeps their logits within one result message.
            int span = positions.Max() + 1;
            long rowBytes = 4L * span * info.VocabSize;
            if (rowBytes > Calls.MaxLogitBytes)
                throw new InvalidParametersException($"{pair.Field}: the lens logits of one layer over {span} positions are {rowBytes >> 20} MiB, over the {Calls.MaxLogitBytes >> 20} MiB a result may carry; give positions (up to {Calls.MaxLogitBytes / (4L * info.VocabSize) - 1}) or a shorter prompt");
            var lensInput = Calls.Tokens(pair.Clean[..span]);
            var capture = new RunRequest { Inputs = { lensInput }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            capture.Captures.Add(new Capture { Hooks = { lens.Select(x => x.Hook).Distinct() }, Positions = new PositionSelection { All = true } });
            var (acts, realResult) = await Calls.RunAsync(context.Model, capture, ct);
            var real = WireTensor.FromProto(realResult.Logits, "logits").ToFloat32();

            var lensLogits = new float[lens.Count][];
            int perRun = Math.Min(set.MaxBatch, Calls.LogitRows(info, span));
            for (int start = 0; start < lens.Count; start += perRun)
            {
                int n = Math.Min(perRun, lens.Count - start);
                var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.All } };
                for (int r = 0; r < n; r++)
                {
                    request.Inputs.Add(lensInput);
                    var resid = acts[lens[start + r].Hook].Select(0, 0).Head(span); // [span, d_model]
                    request.Interventions.Add(new Intervention { Hook = final, Op = InterventionOp.Set, Value = resid.ToProto(), Rows = { r } });
                }
                var (_, result) = await Calls.RunAsync(context.Model, request, ct);
                var all = WireTensor.FromProto(result.Logits, "logits").ToFloat32();
                int per = span * info.VocabSize;
                for (int r = 0; r < n; r++)
                    lensLogits[start + r] = all.AsSpan(r * per, per).ToArray();
            }
            // The last layer's lens is the model's forward: report how far it is from the real logits.
            var last = lensLogits[^1].AsSpan((span - 1) * info.VocabSize, info.VocabSize);
            for (int i = 0; i < last.Length; i++)
                maxDiff = Math.Max(maxDiff, Math.Abs(last[i] - real[i]));

            var labels = await Check.PositionLabelsAsync(context.Model, pair.Clean, ct);
            var probGrid = new double[lens.Count, positions.Count];
            var saveProb = new float[lens.Count * span];
            var saveRank = new float[lens.Count * span];
            var saveLast = new float[lens.Count * info.VocabSize];
            var topIds = new List<int[]>();
            for (int li = 0; li < lens.Count; li++)
            {
                for (int pos = 0; pos < span; pos++)
                {
                    var row = lensLogits[li].AsSpan(pos * info.VocabSize, info.VocabSize).ToArray();
                    double logp = Calls.LogProb(row, pair.Answer);
                    int rank = row.Count(v => v > row[pair.Answer]);
                    saveProb[li * span + pos] = (float)Math.Exp(logp);
                    saveRank[li * span + pos] = rank;
                    if (pos == span - 1)
                    {
                        Array.Copy(row, 0, saveLast, li * info.VocabSize, info.VocabSize);
                        lastAnswerProb[li] += Math.Exp(logp) / set.Pairs.Count;
                    }
                    int pj = positions.IndexOf(pos);
                    if (pj < 0)
                        continue;
                    probGrid[li, pj] = Math.Exp(logp);
                    var top = Enumerable.Range(0, row.Length).OrderByDescending(i => row[i]).Take(k).ToArray();
                    topIds.Add(top);
                    rows.Add([pi, lens[li].Layer, lens[li].Hook, pos, labels[pos], null, string.Join(' ', top), row[top[0]], row[pair.Answer], Math.Exp(logp), rank]);
                }
            }
            // Token texts of the top ids, one Detokenize call per pair.
            var texts = await context.Model.DetokenizeAsync([.. topIds.SelectMany(x => x).Select(x => new[] { x })], ct);
            int ti = 0, first = rows.Count - topIds.Count;
            for (int r = 0; r < topIds.Count; r++)
            {
                var names = topIds[r].Select(_ => texts[ti++]).ToList();
                var old = rows[first + r];
                rows[first + r] = [.. old.Take(5), string.Join(" | ", names), .. old.Skip(6)];
            }
            report.Tensor($"pair{pi}.answer_prob", saveProb, [lens.Count, span], "the answer's probability [lens layer (first = embeddings when included), position up to the last reported]");
            report.Tensor($"pair{pi}.answer_rank", saveRank, [lens.Count, span], "the answer's rank (0 = top) [lens layer, position]");
            report.Tensor($"pair{pi}.last_position_logits", saveLast, [lens.Count, info.VocabSize], "lens logits at the last position reported (the prompt's last by default) [lens layer, vocab]");
            if (pi == 0)
            {
                report.Heatmap("answer_prob", "logit lens: answer probability (pair 0)", [.. lens.Select(x => x.Layer < 0 ? "embed" : $"L{x.Layer}")],
                    [.. positions.Select(x => labels[x])], probGrid, "layer", "position", "probability of the answer read from the residual stream after each layer, per position (pair 0)");
            }
            context.ReportProgress(0.05 + 0.9 * (pi + 1) / set.Pairs.Count, $"{pair.Field}: lens of {lens.Count} layers");
        }
        report.Summary["pairs"] = set.Pairs.Count;
        report.Summary["layers"] = new JsonArray([.. lens.Select(x => (JsonNode)x.Layer)]);
        report.Summary["last_position_answer_prob"] = new JsonArray([.. lastAnswerProb.Select(x => (JsonNode)x)]);
        report.Summary["last_layer_max_abs_diff"] = maxDiff;
        report.Tables.Add(new ResultTable
        {
            Name = "logit_lens",
            Columns = ["pair", "layer", "hook", "position", "token", "top_tokens", "top_ids", "top_logit", "answer_logit", "answer_prob", "answer_rank"],
            Rows = rows,
        });
    }

    private static List<int> Positions(IReadOnlyList<int>? positions, int length, string field)
    {
        if (positions is null)
            return [.. Enumerable.Range(0, length)];
        var result = new List<int>();
        for (int i = 0; i < positions.Count; i++)
        {
            int x = positions[i] < 0 ? length + positions[i] : positions[i];
            if (x < 0 || x >= length)
                throw new InvalidParametersException($"positions[{i}]: {positions[i]} is outside {field}.clean's {length} tokens (use 0..{length - 1}, or negative from the end)");
            if (!result.Contains(x))
                result.Add(x);
        }
        return result;
    }
}
