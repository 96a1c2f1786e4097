using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using InterpMesh.Cli.Remote;
using InterpMesh.Cli.Report;
using InterpMesh.Client;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins;

namespace InterpMesh.Cli.Demo;

/// <summary>
/// The demo's analyses, each run through the gateway as a user's job would be: its findings go to
/// stdout as a short table and into the report as charts. A failed analysis is reported (in both)
/// and the others still run.
/// </summary>
internal sealed class DemoAnalyses(string gateway, HtmlReport report, TextWriter stdout, TextWriter stderr, bool quick) : IDisposable
{
    private static readonly CultureInfo C = CultureInfo.InvariantCulture;
    private readonly MeshClient analyses = MeshClient.Connect(gateway);

    public void Dispose() => analyses.Dispose();

    /// <summary>Per analysis: whether it succeeded and its headline figures (the <c>--json</c> output).</summary>
    public JsonObject Results { get; } = [];

    public bool AllSucceeded => Results.All(r => r.Value!["state"]!.GetValue<string>() == "succeeded");

    private Job? Analyze(string key, string label, string plugin, string model, object parameters)
    {
        var request = new AnalysisRequest { Plugin = plugin, Model = model, ParametersJson = JsonSerializer.Serialize(parameters) };
        Job job;
        try
        {
            job = RemoteAnalyses.Follow(progress => analyses.RunAnalysisAsync(request, progress), stderr, $"{label,-22} ");
        }
        catch (InvalidOperationException e)
        {
            Fail(key, label, e.Message);
            return null;
        }
        if (job.State != JobState.Succeeded)
        {
            Fail(key, label, $"{job.State.ToString().ToUpperInvariant()} ({job.ErrorCode}): {job.Error}");
            return null;
        }
        return job;
    }

    private void Fail(string key, string label, string reason)
    {
        stderr.WriteLine($"{label}: {reason}");
        report.Error($"{label} failed: {reason}");
        Results[key] = new JsonObject { ["state"] = "failed", ["error"] = reason };
    }

    private void Succeed(string key, JsonObject findings) =>
        Results[key] = new JsonObject { ["state"] = "succeeded", ["findings"] = findings };

    private static List<JsonArray> Rows(Job job, string table) =>
        [.. JsonNode.Parse(job.Result.Tables.Single(t => t.Name == table).RowsJson)!.AsArray().Select(r => r!.AsArray())];

    private static double D(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : double.NaN;

    private static string F(double v, string format = "0.###") => v.ToString(format, C);

    private void Findings(string title, IReadOnlyList<string> columns, IReadOnlyList<IReadOnlyList<string>> rows)
    {
        var widths = columns.Select((c, i) => Math.Max(c.Length, rows.Select(r => r[i].Length).DefaultIfEmpty(0).Max())).ToArray();
        stdout.WriteLine($"\n{title}");
        stdout.WriteLine("  " + string.Join("  ", columns.Select((c, i) => c.PadRight(widths[i]))));
        foreach (var r in rows)
            stdout.WriteLine("  " + string.Join("  ", r.Select((v, i) => v.PadRight(widths[i]))));
        stdout.Flush();
    }

    public void Probing()
    {
        report.Section("probing", "Probing: where is sentiment readable? (model: concepts)",
            "Logistic-regression probes on the last token of \"the dog is happy . what a\" at every residual stream and MLP output, then k-sparse probes on the best neurons.");
        var data = DemoData.LabelledSentiment(quick ? 96 : 160, seed: 1);
        var job = Analyze("probing", "probing", "probing", "concepts", new
        {
            rows = data.Select(d => new { text = d.Text, label = d.Label }),
            hooks = new[] { "blocks.*.hook_resid_post", "blocks.*.mlp.hook_post" },
            position = "last",
            holdout = 0.25,
            seed = 3,
            sparse = new { ks = quick ? new[] { 1, 2, 4, 16 } : [1, 2, 4, 8, 16, 64], top_neurons = 5 },
            save_prefix = "probes/sentiment",
        });
        if (job is null)
            return;
        foreach (var f in job.Result.Figures)
            report.Figure(f);
        var perHook = Rows(job, "per_hook");
        var rows = perHook.Select(r => (IReadOnlyList<string>)[r[0]!.GetValue<string>(), F(D(r[2])), F(D(r[3]))]).ToList();
        report.Table("Dense probe per hook (held-out rows)", ["hook", "accuracy", "F1"], rows);
        var neurons = Rows(job, "top_neurons").Take(5).Select(r => (IReadOnlyList<string>)[.. r.Take(5).Select(HtmlReport.Cell)]).ToList();
        report.Table("Top neurons (first sparse hook)", ["hook", "ranking", "rank", "neuron", "score"], neurons);
        Findings("Probing (concepts): sentiment probe accuracy", ["hook", "accuracy", "F1"], rows);
        var depth = JsonNode.Parse(job.Result.SummaryJson)!["concept_depth"];
        Succeed("probing", new JsonObject
        {
            ["accuracy_by_hook"] = new JsonObject(perHook.Select(r => KeyValuePair.Create(r[0]!.GetValue<string>(), (JsonNode?)D(r[2])))),
            ["concept_depth"] = depth?.DeepClone(),
        });
    }

    public void Sae()
    {
        const string hook = "blocks.0.hook_resid_post", name = "saes/concepts-l0";
        report.Section("sae", "Sparse autoencoder on the residual stream (model: concepts)",
            $"A TopK SAE (128 latents, k = 8) trained on {hook} from text streamed through the model service, evaluated, and its most used features shown with the contexts that activate them.");
        var train = Analyze("sae", "sae: train", "sae", "concepts", new
        {
            hook, texts = DemoData.Sentences(200, 1), architecture = "topk", d_sae = 128, k = 8,
            steps = quick ? 150 : 300, batch_tokens = 128, save_as = name,
        });
        if (train is null)
            return;
        var curve = Rows(train, "training");
        IReadOnlyList<(double, double)> Series(int column) => [.. curve.Select(r => (D(r[0]), D(r[column])))];
        report.Chart(Figures.Lines("Training loss", "step", "loss", [("loss", Series(2))], yFromZero: true), "Reconstruction loss by step.");
        report.Chart(Figures.Lines("Explained variance and dead latents", "step", "fraction", [("explained variance", Series(4)), ("dead fraction", Series(5))], yFromZero: true),
            "Explained variance of the residual stream and the fraction of latents that have not fired recently.");
        report.Chart(Figures.Lines("L0 (active latents per token)", "step", "L0", [("L0", Series(3))], yFromZero: true), "TopK fixes L0 at k once training settles.");

        var eval = Analyze("sae", "sae: evaluate", "sae", "concepts", new { mode = "evaluate", sae = name, texts = DemoData.Sentences(48, 2) });
        if (eval is null)
            return;
        var e = JsonNode.Parse(eval.Result.SummaryJson)!;
        var metrics = new (string Name, string Key)[] { ("L0", "l0"), ("explained variance", "explained_variance"), ("CE loss recovered", "ce_loss_recovered"), ("CE clean", "ce_clean"), ("CE with SAE", "ce_with_sae"), ("CE zero-ablation", "ce_zero_ablation"), ("dead fraction", "dead_fraction") };
        var evalRows = metrics.Where(m => e[m.Key] is not null).Select(m => (IReadOnlyList<string>)[m.Name, F(D(e[m.Key]), "0.####")]).ToList();
        report.Table("Evaluation on held-out sentences", ["metric", "value"], evalRows);

        var inspect = Analyze("sae", "sae: inspect", "sae", "concepts", new { mode = "inspect", sae = name, texts = DemoData.Sentences(24, 3) });
        if (inspect is null)
            return;
        // The features that are most often a token's strongest, skipping the one that fires on everything.
        var top = Rows(inspect, "features").Select(r => r[3]!.AsArray()).Where(a => a.Count > 0).Select(a => a[0]!["feature"]!.GetValue<int>())
            .GroupBy(f => f).OrderByDescending(g => g.Count()).Select(g => g.Key).Take(quick ? 2 : 3).ToList();
        var featureRows = new List<IReadOnlyList<string>>();
        foreach (int feature in top)
        {
            var f = Analyze("sae", $"sae: feature {feature}", "sae", "concepts", new { mode = "inspect", sae = name, texts = DemoData.Sentences(24, 4), feature, top = 3 });
            if (f is null)
                return;
            var s = JsonNode.Parse(f.Result.SummaryJson)!;
            string promotes = string.Join(" ", s["promotes"]!.AsArray().Select(x => x!.GetValue<string>().Trim()));
            report.Paragraph($"Feature {feature}: active on {D(s["density"]):P1} of tokens; through the unembedding it promotes: {promotes}.");
            var contexts = Rows(f, "contexts");
            var all = contexts.SelectMany(c => c[2]!.AsArray().Select(t => t!.AsArray())).Select(t => (t[0]!.GetValue<string>(), D(t[1]))).ToList();
            double max = all.Select(t => t.Item2).DefaultIfEmpty(0).Max();
            foreach (var c in contexts)
                report.Tokens($"#{c[0]}", [.. c[2]!.AsArray().Select(t => (t![0]!.GetValue<string>(), D(t[1])))], max);
            string best = all.Count == 0 ? "" : all.MaxBy(t => t.Item2).Item1.Trim();
            featureRows.Add([feature.ToString(C), F(D(s["density"]), "0.###"), best, promotes]);
        }
        Findings("SAE (concepts, blocks.0.hook_resid_post): training and evaluation", ["metric", "value"],
            [["steps", curve.Count > 0 ? HtmlReport.Cell(curve[^1][0]) : "0"], .. evalRows]);
        Findings("SAE: most used features", ["feature", "density", "strongest token", "promotes"], featureRows);
        Succeed("sae", new JsonObject
        {
            ["explained_variance"] = D(e["explained_variance"]),
            ["ce_loss_recovered"] = D(e["ce_loss_recovered"]),
            ["l0"] = D(e["l0"]),
            ["features_shown"] = new JsonArray([.. top.Select(t => (JsonNode)t)]),
        });
    }

    public void Steering()
    {
        report.Section("steering", "Steering with a sentiment vector (model: concepts)",
            "A difference-of-means vector from contrast pairs (positive vs negative sentences) at layer 0, added with growing coefficients to negative prompts.");
        var (positive, negative) = DemoData.SentimentPairs(quick ? 24 : 40);
        var extract = Analyze("steering", "steering: extract", "steering", "concepts", new { positive, negative, save_as = "vectors/sentiment", layers = new[] { 0 } });
        if (extract is null)
            return;
        var perLayer = Rows(extract, "per_layer");
        report.Table("Extracted vector per layer", ["layer", "hook", "norm", "projection gap", "direction accuracy"],
            perLayer.Select(r => (IReadOnlyList<string>)[.. r.Take(5).Select(HtmlReport.Cell)]));
        double[] coefficients = quick ? [0, 1, 2] : [0, 0.5, 1, 2, 3];
        var apply = Analyze("steering", "steering: sweep", "steering", "concepts", new
        {
            mode = "apply", vector = "vectors/sentiment", layer = 0, coefficients, prompts = DemoData.NegativePrompts, max_new_tokens = 4,
            target = DemoData.PositiveExclamations, control = DemoData.NegativeExclamations,
        });
        if (apply is null)
            return;
        var sweep = Rows(apply, "sweep");
        report.Chart(Figures.Lines("Coefficient sweep", "coefficient", "logit difference (positive − negative)", [("logit diff", [.. sweep.Select(r => (D(r[0]), D(r[1])))])]),
            "Mean logit difference between positive and negative exclamations after \"what a\".");
        report.Chart(Figures.Lines("Share of positive continuations", "coefficient", "share", [("target share", [.. sweep.Select(r => (D(r[0]), D(r[4])))])], yFromZero: true),
            "Fraction of the next-token probability on positive exclamations, among positive + negative ones.");
        var samples = Rows(apply, "samples");
        report.Table("Sample generations", ["coefficient", "prompt", "generation"], samples.Select(r => (IReadOnlyList<string>)[.. r.Select(HtmlReport.Cell)]));
        var rows = sweep.Select(r => (IReadOnlyList<string>)[F(D(r[0])), F(D(r[1])), F(D(r[4]))]).ToList();
        Findings("Steering (concepts): sentiment vector added at layer 0", ["coefficient", "logit diff", "positive share"], rows);
        var strongest = samples.Where(r => D(r[0]) == coefficients[^1]).Select(r => $"  \"{r[1]}\" → \"{r[2]}\"").Take(2);
        stdout.WriteLine($"  samples at coefficient {F(coefficients[^1])}:\n{string.Join('\n', strongest)}");
        Succeed("steering", new JsonObject
        {
            ["logit_diff_by_coefficient"] = new JsonObject(sweep.Select(r => KeyValuePair.Create(F(D(r[0])), (JsonNode?)D(r[1])))),
            ["target_share_by_coefficient"] = new JsonObject(sweep.Select(r => KeyValuePair.Create(F(D(r[0])), (JsonNode?)D(r[4])))),
        });
    }

    public void Retrieval()
    {
        report.Section("retrieval", "Retrieval heads (model: retrieval)",
            "Needle-in-a-haystack over key–value lists at several depths (Wu et al.'s retrieval score), then recall with the top 3 heads zero-ablated against five random draws of 3 other heads.");
        var job = Analyze("retrieval", "retrieval heads", "retrieval-heads", "retrieval", new
        {
            analyses = new[] { "retrieval", "ablation" },
            synthetic = DemoData.KeyValueTask(),
            depths = quick ? new[] { 0, 50, 100 } : [0, 25, 50, 75, 100],
            trials_per_cell = quick ? 2 : 3,
            seed = 1,
            ablate_k = 3,
        });
        if (job is null)
            return;
        foreach (var f in job.Result.Figures.Where(f => f.Name == "retrieval_heatmap"))
            report.Figure(f);
        var ablation = Rows(job, "ablation");
        report.Chart(Figures.Bars("Recall with heads ablated", "recall accuracy", [.. ablation.Select(r => (r[0]!.GetValue<string>(), D(r[2])))]),
            "Needle recall with no head ablated, the top retrieval heads ablated, and each of five random draws of as many other heads ablated (draws that catch layer 0's key-to-value heads break recall too).");
        var ranked = Rows(job, "ranked").Take(5).ToList();
        var rows = ranked.Select(r => (IReadOnlyList<string>)[HtmlReport.Cell(r[1]), F(D(r[4])), HtmlReport.Cell(r[5])]).ToList();
        report.Table("Top heads by retrieval score", ["head", "retrieval score", "retrieval head"], rows);
        Findings("Retrieval heads (retrieval): top heads", ["head", "retrieval score", "retrieval head (> 0.1)"], rows);
        var s = JsonNode.Parse(job.Result.SummaryJson)!;
        stdout.WriteLine($"  recall {D(s["recall_accuracy"]):P0}; ablating the top heads drops it by {D(s["ablation"]?["drop_top"]):0.##}, random heads by {D(s["ablation"]?["drop_random"]):0.##} on average (sd {D(s["ablation"]?["random_sd"]):0.##} over {s["ablation"]?["random_draws"]?.AsArray().Count} draws)");
        Succeed("retrieval", new JsonObject
        {
            ["retrieval_heads"] = s["retrieval_heads"]?.DeepClone(),
            ["recall_accuracy"] = D(s["recall_accuracy"]),
            ["ablation"] = s["ablation"]?.DeepClone(),
        });
    }

    public void Induction()
    {
        report.Section("induction", "Induction and previous-token heads (model: induction)",
            "TransformerLens-style head detection on random token sequences repeated twice, and the attention pattern of the top induction head on an example.");
        var job = Analyze("induction", "induction heads", "retrieval-heads", "induction", new
        {
            analyses = new[] { "detector" },
            detector = new { tokens = DemoData.InductionTokens(), prompts = quick ? 8 : 16, length = 20 },
        });
        if (job is null)
            return;
        foreach (var f in job.Result.Figures)
            report.Figure(f);
        var s = JsonNode.Parse(job.Result.SummaryJson)!;
        var perHead = Rows(job, "per_head");
        var rows = perHead.OrderByDescending(r => D(r[6])).Take(4)
            .Select(r => (IReadOnlyList<string>)[HtmlReport.Cell(r[2]), F(D(r[6])), F(D(r[4]))]).ToList();
        report.Table("Heads by induction score", ["head", "induction", "previous token"], rows);
        Findings("Induction heads (induction): top heads", ["head", "induction score", "previous-token score"], rows);
        string topHead = s["top_induction_heads"]!.AsArray()[0]!.GetValue<string>();
        Succeed("induction", new JsonObject
        {
            ["top_induction_heads"] = s["top_induction_heads"]?.DeepClone(),
            ["top_previous_token_heads"] = s["top_previous_token_heads"]?.DeepClone(),
        });
        AttentionPattern(topHead);
    }

    /// <summary>
    /// Circuits on the "induction" toy: which heads cause the induction behaviour (activation patching),
    /// through which input the previous-token heads reach them (path patching), the same ranking from
    /// gradients (attribution patching), what each layer predicts (logit lens) and what each head writes
    /// towards the answer (direct logit attribution).
    /// </summary>
    public void Circuits()
    {
        report.Section("circuits", "Circuits: what causes the induction behaviour (model: induction)",
            "Prompt pairs: a repeated segment (clean) and the same with its first occurrence replaced (corrupted); metric: the logit difference between the answer (the token that followed the current token earlier) and another token. Patching restores parts of the clean run into the corrupted one.");
        int n = quick ? 4 : 8;
        var pairs = DemoData.InductionPairs(n, 1, whole: true);
        var patching = Analyze("circuits", "circuits: patching", "circuits", "induction", new { mode = "activation_patching", pairs, components = new[] { "heads", "resid_pre" } });
        if (patching is null)
            return;
        foreach (var f in patching.Result.Figures)
            report.Figure(f);
        var heads = Rows(patching, "effects").Where(r => r[0]!.GetValue<string>() == "heads").OrderByDescending(r => D(r[7])).ToList();
        var headRows = heads.Take(4).Select(r => (IReadOnlyList<string>)[$"L{r[2]}H{r[3]}", F(D(r[7]))]).ToList();
        report.Table("Heads by normalised patching effect (attn.hook_z, all positions)", ["head", "effect"], headRows);

        var paths = Analyze("circuits", "circuits: paths", "circuits", "induction", new
        {
            mode = "path_patching",
            pairs = DemoData.InductionPairs(n, 3, whole: false),
            receivers = Enumerable.Range(0, 4).Select(h => new { layer = 1, head = h }),
            receiver_inputs = new[] { "q", "k", "v" },
        });
        if (paths is null)
            return;
        var pathEffects = Rows(paths, "path_effects");
        double Through(string input) => pathEffects.Where(r => r[0]!.GetValue<string>().StartsWith("L0", StringComparison.Ordinal) && r[3]!.GetValue<string>() == input).Sum(r => D(r[5]));
        var composition = new[] { "q", "k", "v" }.Select(i => (i, Through(i))).ToList();
        report.Chart(Figures.Bars("Layer-0 heads → induction heads, by receiver input", "normalised effect", [.. composition]),
            "Path patching: the layer-0 heads' clean outputs reach the induction heads only through the chosen input (everything else frozen at the corrupted run). K-composition: the effect goes through the keys.");

        var attribution = Analyze("circuits", "circuits: attribution", "circuits", "induction", new { mode = "attribution_patching", pairs, verify_top = quick ? 6 : 10 });
        if (attribution is null)
            return;
        var attr = Rows(attribution, "attributions").Where(r => r[1]!.GetValue<string>() == "head").OrderByDescending(r => D(r[6])).Take(4)
            .Select(r => (IReadOnlyList<string>)[r[0]!.GetValue<string>(), F(D(r[6]))]).ToList();
        double spearman = D(JsonNode.Parse(attribution.Result.SummaryJson)!["spearman"]);
        report.Table($"Attribution patching (gradient × activation difference; Spearman with real patching on the top nodes {F(spearman)})", ["head", "estimate"], attr);

        var lens = Analyze("circuits", "circuits: logit lens", "circuits", "induction", new { mode = "logit_lens", pairs = pairs.Take(2).ToList() });
        if (lens is null)
            return;
        foreach (var f in lens.Result.Figures)
            report.Figure(f);
        var dla = Analyze("circuits", "circuits: DLA", "circuits", "induction", new { mode = "direct_logit_attribution", pairs });
        if (dla is null)
            return;
        var d = JsonNode.Parse(dla.Result.SummaryJson)!;
        var dlaRows = Rows(dla, "dla").OrderByDescending(r => Math.Abs(D(r[4]))).Take(6).Select(r => (IReadOnlyList<string>)[r[0]!.GetValue<string>(), F(D(r[4]))]).ToList();
        report.Table($"Direct logit attribution (parts + bias {F(D(d["sum_of_parts"]), "0.####")} vs real logit difference {F(D(d["logit_diff"]), "0.####")})", ["component", "contribution"], dlaRows);

        Findings("Circuits (induction): heads by patching effect", ["head", "normalised effect"], headRows);
        stdout.WriteLine($"  previous-token heads → induction heads: through k {F(Through("k"))}, q {F(Through("q"))}, v {F(Through("v"))}; attribution vs patching Spearman {F(spearman)}; DLA error {D(d["max_abs_error"]):0.#e0}");
        Succeed("circuits", new JsonObject
        {
            ["top_heads"] = new JsonArray([.. heads.Take(4).Select(r => (JsonNode)$"L{r[2]}H{r[3]}")]),
            ["layer0_to_layer1_by_input"] = new JsonObject(composition.Select(c => KeyValuePair.Create(c.i, (JsonNode?)c.Item2))),
            ["attribution_spearman"] = spearman,
            ["dla_max_abs_error"] = D(d["max_abs_error"]),
            ["lens_last_layer_max_abs_diff"] = D(JsonNode.Parse(lens.Result.SummaryJson)!["last_layer_max_abs_diff"]),
        });
    }

    /// <summary>The attention pattern of one head (label "L1H2") on a repeated sequence, captured through the gateway.</summary>
    private void AttentionPattern(string head)
    {
        var m = System.Text.RegularExpressions.Regex.Match(head, @"^L(\d+)H(\d+)$");
        int layer = int.Parse(m.Groups[1].Value, C), index = int.Parse(m.Groups[2].Value, C);
        string hookName = $"blocks.{layer}.attn.hook_pattern", text = DemoData.RepeatedSequence(10, seed: 7);
        try
        {
            using var model = MeshClient.Connect(gateway, model: "induction");
            var request = new RunRequest { Inputs = { new Input { Text = text } }, Captures = { new Capture { Hooks = { hookName } } } };
            var (captured, ids) = Capture(model, request).GetAwaiter().GetResult();
            var pattern = captured.ToFloat32();
            var shape = captured.Shape;
            var words = model.DetokenizeAsync([.. ids.Select(i => new[] { i })]).GetAwaiter().GetResult().Select(w => w.Trim()).ToList();
            int heads = (int)shape[1], q = (int)shape[2], k = (int)shape[3];
            var values = new double[q, k];
            for (int i = 0; i < q; i++)
            {
                for (int j = 0; j < k; j++)
                    values[i, j] = pattern[((long)index * q + i) * k + j];
            }
            var labels = words.Select((w, i) => $"{i}:{w}").ToList();
            report.Chart(Figures.Matrix($"Attention pattern of {head} ({heads} heads in layer {layer})", labels, labels, values, 1, "query position", "key position"),
                $"{head} on \"{text}\": in the second copy each token attends to the token after its earlier occurrence (the off-diagonal stripe).");
        }
        catch (RpcException e)
        {
            report.Error($"the attention pattern of {head} could not be captured: {e.Status.StatusCode}: {e.Status.Detail}");
            Results["induction"]!["attention_pattern_error"] = e.Status.Detail;
        }
    }

    /// <summary>The one captured activation of <paramref name="request"/> and the token ids it ran on.</summary>
    private static async Task<(WireTensor Captured, int[] Ids)> Capture(MeshClient model, RunRequest request)
    {
        WireTensor? captured = null;
        int[] ids = [];
        await foreach (var item in model.RunAsync(request))
        {
            captured = item.Activation ?? captured;
            if (item.Result is { } result)
                ids = [.. WireTensor.FromProto(result.Tokens, "tokens").ToInt64().Select(x => (int)x)];
        }
        return (captured ?? throw new InvalidOperationException("the run returned no activation"), ids);
    }
}
