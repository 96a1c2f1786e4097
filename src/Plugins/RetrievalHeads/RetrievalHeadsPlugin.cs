using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.RetrievalHeads.Detection;
using InterpMesh.Plugins.RetrievalHeads.Retrieval;

namespace InterpMesh.Plugins.RetrievalHeads;

/// <summary>
/// Finds the heads that copy from context: retrieval scores from needle-in-a-haystack trials
/// (Wu et al. 2024), TransformerLens head-detector scores (previous-token, duplicate-token,
/// induction), and validation by ablating the top heads against as many random ones.
/// Definitions: docs/plugins/retrieval-heads.md.
/// </summary>
public sealed class RetrievalHeadsPlugin() : AnalysisPlugin<RetrievalHeadsParameters>(
    id: "retrieval-heads",
    version: "1.1.0",
    description: "Retrieval heads (needle-in-a-haystack copy scores), previous-token/duplicate/induction head scores, and ablation of the top heads.",
    produces: ["table:per_head", "table:ranked", "table:ablation", "figure:retrieval_heatmap", "figure:induction_heatmap", "artifact:trials"])
{
    protected override async Task<PluginResult> RunAsync(RetrievalHeadsParameters p, IAnalysisContext context)
    {
        var ct = context.Cancellation;
        var info = await context.Model.GetInfoAsync(ct);
        var analyses = p.Analyses.ToHashSet();
        double recallThreshold = p.RecallThreshold;
        double scoreThreshold = p.ScoreThreshold;
        int seed = p.Seed;
        int layers = info.NLayers, heads = info.NHeads;
        var summary = new JsonObject { ["model"] = context.Model.Name, ["layers"] = layers, ["heads_per_layer"] = heads };
        var figures = new List<ResultFigure>();
        var artifacts = new List<string>();
        var tables = new List<ResultTable>();
        double[,]? retrieval = null;
        var detector = new Dictionary<string, double[,]>();

        if (analyses.Contains(RetrievalAnalysis.Detector))
        {
            var settings = p.Detector ?? new DetectorSettings();
            (detector, var prompts) = await DetectAsync(settings, context.Model, info, seed, ct);
            // Models without a tokenizer take token ids only: their prompts are listed without text.
            var promptTexts = string.IsNullOrEmpty(info.Tokenizer) ? null
                : await context.Model.DetokenizeAsync([.. prompts.Select(t => t.Select(x => (int)x).ToArray())], ct);
            tables.Add(new ResultTable
            {
                Name = "detector_prompts",
                Columns = ["index", "tokens", "text"],
                Rows = [.. prompts.Select((t, i) => (IReadOnlyList<JsonNode?>)[i, new JsonArray([.. t.Select(x => (JsonNode)x)]), promptTexts?[i]])],
            });
            summary["detector_measure"] = settings.Measure.ToString().ToLowerInvariant();
            foreach (var (kind, scores) in detector)
                summary[$"top_{kind}_heads"] = new JsonArray([.. Ranked(scores).Take(4).Select(x => (JsonNode)Label(x.Layer, x.Head))]);
            figures.Add(new ResultFigure { Name = "induction_heatmap", MediaType = "image/svg+xml", Content = HeadMap("Induction score", detector["induction"]), Caption = "Induction score per head (layer × head)" });
            figures.Add(new ResultFigure { Name = "previous_token_heatmap", MediaType = "image/svg+xml", Content = HeadMap("Previous-token score", detector["previous_token"]), Caption = "Previous-token score per head" });
            context.ReportProgress(analyses.Contains(RetrievalAnalysis.Retrieval) ? 0.2 : 1, "head detector done");
        }

        List<TrialResult>? results = null;
        if (analyses.Contains(RetrievalAnalysis.Retrieval) || analyses.Contains(RetrievalAnalysis.Ablation))
        {
            var trials = await Trials.BuildAsync(p, context.Model, info, ct);
            results = [];
            for (int i = 0; i < trials.Count; i++)
            {
                results.Add(await RetrievalScorer.RunAsync(context.Model, info, trials[i], [], recallThreshold, score: true, ct));
                context.ReportProgress(0.2 + 0.5 * (i + 1) / trials.Count, $"trial {i + 1}/{trials.Count}");
            }
            var counted = results.Where(r => r.Recalled).ToList();
            retrieval = new double[layers, heads];
            foreach (var r in counted)
                for (int l = 0; l < layers; l++)
                    for (int h = 0; h < heads; h++)
                        retrieval[l, h] += r.Hits[l, h] / counted.Count;
            var passing = Ranked(retrieval).Where(x => x.Score > scoreThreshold).ToList();
            summary["trials"] = trials.Count;
            summary["trials_recalled"] = counted.Count;
            summary["recall_accuracy"] = counted.Count / (double)trials.Count;
            summary["score_threshold"] = scoreThreshold;
            summary["retrieval_heads"] = new JsonArray([.. passing.Select(x => (JsonNode)Label(x.Layer, x.Head))]);
            summary["retrieval_head_share"] = passing.Count / (double)(layers * heads);
            tables.Add(new ResultTable
            {
                Name = "ranked",
                Columns = ["rank", "head", "layer", "index", "retrieval_score", "retrieval_head"],
                Rows = [.. Ranked(retrieval).Select((x, i) => (IReadOnlyList<JsonNode?>)[i + 1, Label(x.Layer, x.Head), x.Layer, x.Head, x.Score, x.Score > scoreThreshold])],
            });
            figures.Insert(0, new ResultFigure { Name = "retrieval_heatmap", MediaType = "image/svg+xml", Content = HeadMap("Retrieval score", retrieval), Caption = $"Retrieval score per head over {counted.Count} recalled trials" });

            if (analyses.Contains(RetrievalAnalysis.Ablation))
            {
                // Default: the retrieval heads found, at most half of all heads, so that a random control
                // of the same size can be drawn from the others.
                int k = p.AblateK ?? Math.Clamp(passing.Count, 1, Math.Max(1, layers * heads / 2));
                var top = Ranked(retrieval).Take(k).Select(x => (x.Layer, x.Head)).ToList();
                var others = Enumerable.Range(0, layers * heads).Select(i => (Layer: i / heads, Head: i % heads)).Where(x => !top.Contains(x)).ToList();
                if (others.Count < k)
                    throw new InvalidParametersException($"ablate_k {k} leaves {others.Count} heads outside the top ones, too few for a random control of {k} heads; lower ablate_k");
                // The control: several random sets drawn from the heads outside the top ones, each with its own seed,
                // so that one unlucky draw (one that catches another circuit's heads) cannot invert the conclusion.
                var draws = Enumerable.Range(0, p.RandomDraws).Select(d =>
                {
                    var rng = new Random(seed + 1 + d);
                    return others.OrderBy(_ => rng.Next()).Take(k).ToList();
                }).ToList();
                double baseline = counted.Count / (double)trials.Count;
                var rows = new List<IReadOnlyList<JsonNode?>> { (IReadOnlyList<JsonNode?>)["none", "", baseline] };
                var ablation = new JsonObject { ["k"] = k, ["baseline"] = baseline };
                async Task<double> AccuracyAsync(List<(int Layer, int Head)> set)
                {
                    int recalled = 0;
                    for (int i = 0; i < trials.Count; i++)
                    {
                        var r = await RetrievalScorer.RunAsync(context.Model, info, trials[i], Ablation(set), recallThreshold, score: false, ct);
                        recalled += r.Recalled ? 1 : 0;
                    }
                    return recalled / (double)trials.Count;
                }
                double topAccuracy = await AccuracyAsync(top);
                rows.Add(["top", string.Join(" ", top.Select(x => Label(x.Layer, x.Head))), topAccuracy]);
                ablation["top"] = topAccuracy;
                ablation["top_heads"] = new JsonArray([.. top.Select(x => (JsonNode)Label(x.Layer, x.Head))]);
                context.ReportProgress(0.85, $"ablation of {k} top heads done");
                var randomAccuracies = new List<double>();
                for (int d = 0; d < draws.Count; d++)
                {
                    double accuracy = await AccuracyAsync(draws[d]);
                    randomAccuracies.Add(accuracy);
                    rows.Add([$"random {d + 1}", string.Join(" ", draws[d].Select(x => Label(x.Layer, x.Head))), accuracy]);
                    context.ReportProgress(0.85 + 0.1 * (d + 1) / draws.Count, $"random draw {d + 1}/{draws.Count} done");
                }
                double mean = randomAccuracies.Average();
                double sd = randomAccuracies.Count > 1 ? Math.Sqrt(randomAccuracies.Sum(a => (a - mean) * (a - mean)) / (randomAccuracies.Count - 1)) : 0;
                ablation["random"] = mean;
                ablation["random_sd"] = sd;
                ablation["random_draws"] = new JsonArray([.. randomAccuracies.Select(a => (JsonNode)a)]);
                ablation["random_heads"] = new JsonArray([.. draws.Select(set => (JsonNode)new JsonArray([.. set.Select(x => (JsonNode)Label(x.Layer, x.Head))]))]);
                ablation["drop_top"] = baseline - topAccuracy;
                ablation["drop_random"] = baseline - mean;
                summary["ablation"] = ablation;
                tables.Add(new ResultTable { Name = "ablation", Columns = ["ablated", "heads", "recall_accuracy"], Rows = rows });
                tables.Add(new ResultTable
                {
                    Name = "ablation_summary",
                    Columns = ["ablated", "recall_accuracy_mean", "recall_accuracy_sd", "sets"],
                    Rows = [["none", baseline, 0.0, 1], ["top", topAccuracy, 0.0, 1], ["random", mean, sd, draws.Count]],
                });
            }

            if (p.SaveTrials)
            {
                var raw = new JsonArray([.. results.Select(r => (JsonNode)new JsonObject
                {
                    ["context_tokens"] = r.Trial.ContextTokens,
                    ["depth"] = r.Trial.Depth,
                    ["prompt"] = new JsonArray([.. r.Trial.Prompt.Select(t => (JsonNode)t)]),
                    ["needle"] = new JsonArray(r.Trial.NeedleStart, r.Trial.NeedleEnd),
                    ["generated"] = new JsonArray([.. r.Generated.Select(t => (JsonNode)t)]),
                    ["generated_text"] = r.GeneratedText,
                    ["recall"] = r.Recall,
                    ["recalled"] = r.Recalled,
                    ["hits"] = new JsonArray([.. Enumerable.Range(0, layers).Select(l => (JsonNode)new JsonArray([.. Enumerable.Range(0, heads).Select(h => (JsonNode)r.Hits[l, h])]))]),
                })]);
                string name = $"retrieval-heads/{context.JobId}/trials";
                await context.Artifacts.SaveFilesAsync(name, new Dictionary<string, byte[]> { ["trials.json"] = Encoding.UTF8.GetBytes(raw.ToJsonString()) },
                    new JsonObject { ["model"] = context.Model.Name, ["trials"] = results.Count }, ct);
                artifacts.Add(name);
            }
        }

        var perHook = new List<IReadOnlyList<JsonNode?>>();
        for (int l = 0; l < layers; l++)
        {
            for (int h = 0; h < heads; h++)
            {
                perHook.Add([l, h, Label(l, h), retrieval?[l, h],
                    detector.TryGetValue("previous_token", out var pt) ? pt[l, h] : null,
                    detector.TryGetValue("duplicate_token", out var dt) ? dt[l, h] : null,
                    detector.TryGetValue("induction", out var ind) ? ind[l, h] : null]);
            }
        }
        tables.Insert(0, new ResultTable { Name = "per_head", Columns = ["layer", "head", "label", "retrieval", "previous_token", "duplicate_token", "induction"], Rows = perHook });
        context.ReportProgress(1, "done");
        return new PluginResult { Summary = summary, Tables = tables, Figures = figures, Artifacts = artifacts };
    }

    private static string Label(int layer, int head) => $"L{layer}H{head}";

    private static List<(int Layer, int Head, double Score)> Ranked(double[,] scores) =>
        [.. Enumerable.Range(0, scores.GetLength(0)).SelectMany(l => Enumerable.Range(0, scores.GetLength(1)).Select(h => (l, h, scores[l, h])))
            .OrderByDescending(x => x.Item3).ThenBy(x => x.l).ThenBy(x => x.h)];

    /// <summary>Zero-ablation of the heads' outputs (hook_z), one intervention per layer.</summary>
    private static IEnumerable<Contracts.V1.Intervention> Ablation(IEnumerable<(int Layer, int Head)> set) =>
        set.GroupBy(x => x.Layer).Select(g => new Contracts.V1.Intervention { Hook = $"blocks.{g.Key}.attn.hook_z", Op = InterventionOp.ZeroAblate, Heads = { g.Select(x => x.Head) } });

    /// <summary>
    /// Head-detector scores, the mean over prompts: the caller's texts, or repeated random sequences
    /// bos + r + r (TransformerLens' standard induction probe). Also returns the prompts used.
    /// </summary>
    private static async Task<(Dictionary<string, double[,]> Scores, List<long[]> Prompts)> DetectAsync(DetectorSettings d, IModelClient model, ModelInfo info, int seed, CancellationToken ct)
    {
        var tokens = new List<long[]>();
        if (d.Texts is { } texts)
        {
            if (texts.Count == 0)
                throw new InvalidParametersException("detector.texts is empty; give prompts, or leave it out for random repeated sequences");
            if (d.Tokens is not null || d.Length is not null)
                throw new InvalidParametersException("detector.texts replaces the random sequences; drop detector.tokens and detector.length");
            var ids = await model.TokenizeAsync([.. texts], ct);
            for (int i = 0; i < ids.Count; i++)
            {
                // TransformerLens' to_tokens prepends BOS.
                int[] row = info.BosTokenId is int b && (ids[i].Length == 0 || ids[i][0] != b) ? [b, .. ids[i]] : ids[i];
                if (row.Length < 2)
                    throw new InvalidParametersException($"detector.texts[{i}] has {row.Length} token; a pattern needs at least 2");
                if (row.Length > info.ContextLength)
                    throw new InvalidParametersException($"detector.texts[{i}] is {row.Length} tokens, longer than the model's context of {info.ContextLength}");
                tokens.Add([.. row.Select(x => (long)x)]);
            }
        }
        else
        {
            int bos = info.BosTokenId is null ? 0 : 1;
            int length = d.Length ?? Math.Min(20, (info.ContextLength - bos) / 2);
            if (2 * length + bos > info.ContextLength)
                throw new InvalidParametersException($"detector.length {length} repeated twice is longer than the model's context of {info.ContextLength}");
            int[] pool;
            if (d.Tokens is { } tk)
            {
                var words = tk.ToList();
                var ids = await model.TokenizeAsync(words, ct);
                pool = [.. ids.Select((t, i) => (info.BosTokenId is int b && t.Length > 0 && t[0] == b ? t[1..] : t) is [var one] ? one
                    : throw new InvalidParametersException($"detector.tokens: '{words[i]}' is not a single token"))];
            }
            else
            {
                pool = [.. Enumerable.Range(0, info.VocabSize).Where(i => i != info.BosTokenId && i != info.EosTokenId)];
            }
            var rng = new Random(seed);
            for (int i = 0; i < d.Prompts; i++)
            {
                var r = Enumerable.Range(0, length).Select(_ => pool[rng.Next(pool.Length)]).ToArray();
                int[] row = [.. (info.BosTokenId is int b ? new[] { b } : []), .. r, .. r];
                tokens.Add([.. row.Select(x => (long)x)]);
            }
        }
        var scores = HeadDetector.Kinds.ToDictionary(k => k, _ => new double[info.NLayers, info.NHeads]);
        // Prompts of one length share a forward (no padding, so patterns are the prompts' own).
        int limit = Math.Max(1, info.Limits?.MaxBatch ?? 16);
        foreach (var group in tokens.GroupBy(t => t.Length).SelectMany(g => g.Chunk(limit)))
        {
            var request = new RunRequest { Captures = { new Capture { Hooks = { "blocks.*.attn.hook_pattern" } } } };
            foreach (var row in group)
                request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { row.Select(x => (int)x) } } });
            await foreach (var output in model.RunAsync(request, ct))
            {
                if (output.Activation is not { } pattern)
                    continue;
                using (pattern)
                {
                    int layer = output.Layer!.Value;
                    foreach (var kind in HeadDetector.Kinds)
                    {
                        var s = HeadDetector.Sum(pattern, group, kind, d.ExcludeBos, d.ExcludeCurrentToken, d.Measure);
                        for (int h = 0; h < s.Length; h++)
                            scores[kind][layer, h] += s[h] / tokens.Count;
                    }
                }
            }
        }
        return (scores, tokens);
    }

    /// <summary>A layer × head score map (white = 0, dark blue = 1) as SVG bytes.</summary>
    private static byte[] HeadMap(string title, double[,] values)
    {
        var layers = Enumerable.Range(0, values.GetLength(0)).Select(l => $"layer {l}").ToList();
        var heads = Enumerable.Range(0, values.GetLength(1)).Select(h => h.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToList();
        return Encoding.UTF8.GetBytes(Figures.Matrix(title, layers, heads, values, 1, "layer", "head"));
    }
}
