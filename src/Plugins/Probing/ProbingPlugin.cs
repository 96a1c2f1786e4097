using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using InterpMesh.Plugins.Probing.Data;
using InterpMesh.Plugins.Probing.Fitting;

namespace InterpMesh.Plugins.Probing;

/// <summary>
/// "Where, and in which neurons, does the model represent this concept?" Dense L2 probes per hook
/// (concept depth: the first layer reaching a fraction of the best layer's accuracy) and k-sparse
/// probes over neuron rankings (Gurnee et al. 2023). Trained probes are saved as artifacts that
/// <c>mode: "apply"</c> runs on new text. Definitions: docs/plugins/probing.md.
/// </summary>
public sealed partial class ProbingPlugin() : AnalysisPlugin<ProbingParameters>(
    id: "probing",
    version: "1.2.0",
    description: "Layer-wise and k-sparse linear probes: where (concept depth) and in which neurons a labelled concept is linearly readable.",
    produces: ["table:per_hook", "table:per_k", "table:top_neurons", "table:splits", "table:predictions", "figure:accuracy_by_layer", "figure:f1_by_k", "artifact:probe"])
{
    protected override Task<PluginResult> RunAsync(ProbingParameters parameters, IAnalysisContext context) => parameters switch
    {
        ApplyParameters apply => ApplyAsync(apply, context),
        TrainParameters train => TrainAsync(train, context),
        _ => throw new InvalidParametersException("mode must be train or apply"),
    };

    /// <summary>An enum value by its parameter name (<c>mean_diff</c>, <c>last</c>).</summary>
    private static string Name<T>(T value) where T : struct, Enum => JsonNamingPolicy.SnakeCaseLower.ConvertName(value.ToString());

    [GeneratedRegex(@"^blocks\.(\d+)\.")]
    private static partial Regex LayerPattern();

    /// <summary>A line chart over categories with accuracy-like values (y from 0 to 1), as SVG bytes.</summary>
    private static byte[] Chart(string title, IReadOnlyList<string> categories, IReadOnlyList<(string Name, IReadOnlyList<double?> Values)> series, string yLabel) =>
        System.Text.Encoding.UTF8.GetBytes(Figures.CategoryLines(title, categories, yLabel, series, 0, 1));

    private static int LayerOf(string hook) => HookNames.Layer(hook) ?? -1;
    private static string KindOf(string hook) => LayerPattern().Replace(hook, "blocks.*.");

    /// <summary>
    /// The settings a train run uses: the parameters, or those a preset fixes. A preset refuses any
    /// of its fields given with another value than the default, naming the field.
    /// </summary>
    internal static TrainParameters Effective(TrainParameters p)
    {
        if (p.Preset is not ProbingPreset.ConceptDepth)
            return p;
        var defaults = new TrainParameters();
        var conflicts = new List<string>();
        if (!p.Hooks.SequenceEqual(defaults.Hooks)) conflicts.Add("hooks");
        if (p.Position != defaults.Position) conflicts.Add("position");
        if (p.Holdout != defaults.Holdout) conflicts.Add("holdout");
        if (p.Split != defaults.Split) conflicts.Add("split");
        if (p.Folds is not null) conflicts.Add("folds");
        if (p.Seed != defaults.Seed) conflicts.Add("seed");
        if (p.C is not null) conflicts.Add("c");
        if (p.ClassWeight != defaults.ClassWeight) conflicts.Add("class_weight");
        if (p.Standardize != defaults.Standardize) conflicts.Add("standardize");
        if (p.Tolerance != defaults.Tolerance) conflicts.Add("tolerance");
        if (p.MaxIterations != defaults.MaxIterations) conflicts.Add("max_iterations");
        if (p.Sparse is not null) conflicts.Add("sparse");
        if (conflicts.Count > 0)
            throw new InvalidParametersException($"parameters.{conflicts[0]}: preset concept_depth sets {string.Join(", ", conflicts)}; leave {(conflicts.Count == 1 ? "it" : "them")} out or drop the preset");
        // Luckfort/CD main.py: post_attention_layernorm output at the last token,
        // LogisticRegression(penalty='l2') (C 1, lbfgs, tol 1e-4, max_iter 100) on unscaled features,
        // train_test_split(test_size=0.4, random_state=42).
        return new TrainParameters
        {
            Preset = p.Preset, Rows = p.Rows, Texts = p.Texts, Labels = p.Labels, TargetIndices = p.TargetIndices, Dataset = p.Dataset, BatchSize = p.BatchSize,
            Hooks = ["blocks.*.ln2.hook_normalized"], Position = ProbePosition.Last, Holdout = 0.4, Split = SplitKind.Sklearn, Seed = 42, C = 1.0,
            ClassWeight = ClassWeight.None, Standardize = false, Tolerance = 1e-4, MaxIterations = 100, Sparse = new SparseSettings { Enabled = false },
            DepthThreshold = p.DepthThreshold, SaveProbes = p.SaveProbes, SavePrefix = p.SavePrefix,
        };
    }

    /// <summary>
    /// Luckfort/CD read the output of Hugging Face's <c>post_attention_layernorm</c>, which includes the
    /// norm's gain (and bias, for LayerNorm); TransformerLens' <c>ln2.hook_normalized</c> is taken before
    /// them. The preset applies <c>blocks.L.ln2.w</c> (and <c>.b</c>) from the model's weights (SDK 2.1).
    /// </summary>
    private static async Task ApplyNormGainAsync(IModelClient model, IReadOnlyList<string> hooks, Dictionary<string, float[][]> features, CancellationToken ct)
    {
        var weights = new Dictionary<string, float[]>(StringComparer.Ordinal);
        await foreach (var w in model.GetWeightsAsync(["blocks.*.ln2.?"], Contracts.V1.DType.Float32, ct))
        {
            using (w.Tensor)
                weights[w.Name] = w.Tensor.data<float>().ToArray();
        }
        foreach (var hook in hooks)
        {
            const string suffix = ".hook_normalized";
            if (!hook.EndsWith(suffix, StringComparison.Ordinal))
                continue;
            string norm = hook[..^suffix.Length];
            if (!weights.TryGetValue(norm + ".w", out var gain))
                throw new InvalidOperationException($"the model serves no {norm}.w, so concept_depth cannot apply the norm's gain as Luckfort/CD read it");
            weights.TryGetValue(norm + ".b", out var bias);
            foreach (var row in features[hook])
            {
                for (int j = 0; j < row.Length; j++)
                    row[j] = row[j] * gain[j] + (bias?[j] ?? 0);
            }
        }
    }

    private static async Task<PluginResult> TrainAsync(TrainParameters given, IAnalysisContext context)
    {
        var p = Effective(given);
        var ct = context.Cancellation;
        var info = await context.Model.GetInfoAsync(ct);
        var rows = await ProbingDataset.LoadAsync(p, context.Artifacts, labelsRequired: true, ct);
        var classes = rows.Select(r => r.Label!).Distinct().Order(StringComparer.Ordinal).ToArray();
        if (classes.Length < 2)
            throw new InvalidParametersException($"every row has the label '{classes[0]}'; a probe needs at least two classes");
        var labels = rows.Select(r => Array.IndexOf(classes, r.Label)).ToArray();
        int folds = p.Folds ?? 0;
        if (folds >= 2 && p.Split == SplitKind.Sklearn)
            throw new InvalidParametersException("parameters.split: sklearn is a single held-out split; leave out folds or use split stratified");
        foreach (var (c, k) in classes.Select((c, k) => (c, k)))
        {
            int count = labels.Count(l => l == k);
            if (count < Math.Max(2, folds))
                throw new InvalidParametersException($"class '{c}' has only {count} example(s) (first at row {Array.IndexOf(labels, k)}); give at least {Math.Max(2, folds)} per class");
        }
        string position = Name(p.Position);
        int seed = p.Seed;
        int batchSize = p.BatchSize;
        List<(int[] Train, int[] Test)> splits = folds >= 2 ? Splits.KFold(labels, folds, seed)
            : p.Split == SplitKind.Sklearn ? [Splits.Shuffle(labels.Length, p.Holdout, (uint)seed)]
            : [Splits.Holdout(labels, p.Holdout, seed)];
        foreach (var (train, test) in splits)
        {
            if (train.Select(i => labels[i]).Distinct().Count() < classes.Length)
                throw new InvalidParametersException($"parameters.split: the training part ({train.Length} rows, seed {seed}) lacks a class; give more rows of each class or use split stratified");
            if (test.Length == 0)
                throw new InvalidParametersException($"parameters.holdout: {p.Holdout} of {labels.Length} rows leaves no held-out row; give more rows");
        }
        double[] grid = p.C is double fixedC ? [fixedC] : [.. p.CGrid];
        var denseOptions = new ProbeFitOptions(p.ClassWeight == ClassWeight.Balanced, p.Standardize, p.Tolerance, p.MaxIterations);

        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (hooks, features) = await ActivationCollector.CollectAsync(context.Model, info, rows, [.. p.Hooks], position, batchSize,
            done => context.ReportProgress(0.4 * done / rows.Count, $"activations {done}/{rows.Count}"), ct);
        if (p.Preset is ProbingPreset.ConceptDepth)
            await ApplyNormGainAsync(context.Model, hooks, features, ct);
        double activationSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();

        // Dense probes per hook.
        var dense = new Dictionary<string, (ProbeMetrics Metrics, double C, Probe Probe)>();
        for (int h = 0; h < hooks.Count; h++)
        {
            ct.ThrowIfCancellationRequested();
            var x = features[hooks[h]];
            var results = splits.Select(s =>
            {
                double c = grid.Length == 1 ? grid[0] : ChooseC(x, labels, classes, s.Train, grid, seed, denseOptions);
                var probe = Probe.Fit(Pick(x, s.Train), Pick(labels, s.Train), classes, c, hooks[h], position, null, denseOptions);
                return (Metrics: Evaluate(probe, Pick(x, s.Test), Pick(labels, s.Test), classes.Length), C: c, Probe: probe);
            }).ToList();
            double chosen = results.GroupBy(r => r.C).OrderByDescending(gr => gr.Count()).ThenBy(gr => gr.Key).First().Key;
            var final = splits.Count == 1 ? results[0].Probe : Probe.Fit(x, labels, classes, chosen, hooks[h], position, null, denseOptions);
            dense[hooks[h]] = (Average(results.Select(r => r.Metrics)), chosen, final);
            context.ReportProgress(0.4 + 0.4 * (h + 1) / hooks.Count, $"probe {h + 1}/{hooks.Count}: {hooks[h]}");
        }
        string best = hooks.OrderByDescending(h => dense[h].Metrics.Accuracy).ThenBy(hooks.IndexOf).First();
        double denseSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();

        // Concept depth per kind of hook.
        double threshold = p.DepthThreshold;
        var depth = new JsonObject();
        foreach (var kind in hooks.GroupBy(KindOf))
        {
            var ordered = kind.OrderBy(LayerOf).ToList();
            double top = ordered.Max(h => dense[h].Metrics.Accuracy);
            var first = ordered.First(h => dense[h].Metrics.Accuracy >= threshold * top);
            depth[kind.Key] = new JsonObject { ["layer"] = LayerOf(first), ["hook"] = first, ["accuracy"] = dense[first].Metrics.Accuracy, ["best_accuracy"] = top, ["threshold"] = threshold };
        }

        // k-sparse probes.
        var perK = new List<IReadOnlyList<JsonNode?>>();
        var topNeurons = new List<IReadOnlyList<JsonNode?>>();
        var sparseSummary = new JsonObject();
        var sparse = p.Sparse ?? new SparseSettings();
        bool sparseOn = sparse.Enabled;
        List<string> sparseHooks = sparse.Hooks is { } sh ? [.. sh] : [best];
        var rankings = sparse.Rankings.Select(Name).ToList();
        int topCount = sparse.TopNeurons;
        var f1ByK = new Dictionary<string, Dictionary<int, double>>();
        var sparseOptions = denseOptions with { Balanced = sparse.ClassWeight == ClassWeight.Balanced };
        var ksUsed = new SortedSet<int>();
        if (sparseOn)
        {
            foreach (var hook in sparseHooks)
            {
                if (!features.TryGetValue(hook, out var x))
                    throw new InvalidParametersException($"sparse.hooks names '{hook}', which is not among the probed hooks ({string.Join(", ", hooks)})");
                int d = x[0].Length;
                var ks = sparse.Ks is { } kv
                    ? [.. kv.Select(e => Math.Min(e, d)).Distinct().Order()]
                    : KList(sparse.KGrid, d);
                var hookSummary = new JsonObject();
                foreach (var ranking in rankings)
                {
                    var order = splits.Select(s => NeuronRanking.Rank(NeuronRanking.Score(ranking, Pick(x, s.Train), Pick(labels, s.Train), classes.Length, seed))).ToList();
                    foreach (int k in ks)
                    {
                        ct.ThrowIfCancellationRequested();
                        var m = Average(splits.Select((s, i) =>
                        {
                            var probe = Probe.Fit(Pick(x, s.Train), Pick(labels, s.Train), classes, dense[hook].C, hook, position, order[i][..k], sparseOptions);
                            return Evaluate(probe, Pick(x, s.Test), Pick(labels, s.Test), classes.Length);
                        }));
                        perK.Add([hook, ranking, k, m.Accuracy, m.F1, m.Precision, m.Recall, m.RocAuc]);
                        if (hook == sparseHooks[0])
                        {
                            (f1ByK.TryGetValue(ranking, out var line) ? line : f1ByK[ranking] = [])[k] = m.F1;
                            ksUsed.Add(k);
                        }
                    }
                    // Top neurons by this ranking on all rows, with the class means.
                    var all = NeuronRanking.Score(ranking, x, labels, classes.Length, seed);
                    var top = NeuronRanking.Rank(all).Take(topCount).ToList();
                    for (int r = 0; r < top.Count; r++)
                    {
                        var means = new JsonObject();
                        for (int c = 0; c < classes.Length; c++)
                            means[classes[c]] = x.Where((_, i) => labels[i] == c).Average(v => (double)v[top[r]]);
                        topNeurons.Add([hook, ranking, r + 1, top[r], all[top[r]], means]);
                    }
                    hookSummary[ranking] = new JsonArray([.. top.Take(5).Select(n => (JsonNode)n)]);
                }
                sparseSummary[hook] = hookSummary;
            }
        }
        double sparseSeconds = clock.Elapsed.TotalSeconds;
        context.ReportProgress(0.95, "saving probes");

        // Probe artifacts.
        var artifacts = new List<string>();
        bool save = p.SaveProbes;
        string prefix = p.SavePrefix ?? $"probes/{context.JobId}";
        if (save)
        {
            foreach (var hook in hooks)
            {
                var (tensors, metadata) = dense[hook].Probe.ToArtifact(context.Model.Name);
                metadata["accuracy"] = dense[hook].Metrics.Accuracy;
                string name = $"{prefix}/{hook}";
                await context.Artifacts.SaveTensorsAndDisposeAsync(name, tensors, metadata, ct);
                artifacts.Add(name);
            }
        }

        var perHook = hooks.Select(h => (IReadOnlyList<JsonNode?>)[h, LayerOf(h), dense[h].Metrics.Accuracy, dense[h].Metrics.F1, dense[h].Metrics.Precision,
            dense[h].Metrics.Recall, dense[h].Metrics.RocAuc, dense[h].C, save ? $"{prefix}/{h}" : null]).ToList();
        var figures = new List<ResultFigure>();
        var kinds = hooks.GroupBy(KindOf).ToList();
        var layers = hooks.Select(LayerOf).Distinct().Order().ToList();
        figures.Add(new ResultFigure
        {
            Name = "accuracy_by_layer",
            MediaType = "image/svg+xml",
            Content = Chart("Probe accuracy by layer", [.. layers.Select(l => l < 0 ? "embed" : l.ToString(System.Globalization.CultureInfo.InvariantCulture))],
            [.. kinds.Select(k => (k.Key, (IReadOnlyList<double?>)[.. layers.Select(l => k.FirstOrDefault(h => LayerOf(h) == l) is { } h ? (double?)dense[h].Metrics.Accuracy : null)]))], "held-out accuracy"),
            Caption = "Held-out accuracy of a dense L2 probe at each layer, one line per kind of hook",
        });
        if (f1ByK.Count > 0)
        {
            var kList = ksUsed.ToList();
            figures.Add(new ResultFigure
            {
                Name = "f1_by_k",
                MediaType = "image/svg+xml",
                Content = Chart($"F1 by k ({sparseHooks[0]})", [.. kList.Select(k => k.ToString(System.Globalization.CultureInfo.InvariantCulture))],
                [.. f1ByK.Select(kv => (kv.Key, (IReadOnlyList<double?>)[.. kList.Select(k => kv.Value.TryGetValue(k, out var f) ? (double?)f : null)]))], "held-out F1"),
                Caption = "Held-out F1 of k-sparse probes, one line per neuron ranking",
            });
        }
        context.ReportProgress(1, "done");
        return new PluginResult
        {
            Summary = new JsonObject
            {
                ["model"] = context.Model.Name,
                ["examples"] = rows.Count,
                ["classes"] = new JsonArray([.. classes.Select(c => (JsonNode)c)]),
                ["position"] = position,
                ["split"] = folds >= 2 ? new JsonObject { ["kind"] = "stratified_kfold", ["folds"] = folds, ["seed"] = seed }
                    : new JsonObject { ["kind"] = Name(p.Split), ["holdout"] = p.Holdout, ["seed"] = seed },
                ["probe"] = new JsonObject
                {
                    ["class_weight"] = Name(p.ClassWeight), ["standardize"] = p.Standardize, ["tolerance"] = p.Tolerance, ["max_iterations"] = p.MaxIterations,
                    ["sparse_class_weight"] = sparseOn ? Name(sparse.ClassWeight) : null,
                },
                ["preset"] = p.Preset is { } preset ? Name(preset) : null,
                ["best_hook"] = best,
                ["best_accuracy"] = dense[best].Metrics.Accuracy,
                ["concept_depth"] = depth,
                ["top_neurons"] = sparseSummary,
                ["seconds"] = new JsonObject { ["activations"] = activationSeconds, ["dense_probes"] = denseSeconds, ["sparse_probes"] = sparseSeconds },
            },
            Tables =
            [
                new ResultTable { Name = "per_hook", Columns = ["hook", "layer", "accuracy", "f1", "precision", "recall", "roc_auc", "c", "probe_artifact"], Rows = perHook },
                new ResultTable { Name = "per_k", Columns = ["hook", "ranking", "k", "accuracy", "f1", "precision", "recall", "roc_auc"], Rows = perK },
                new ResultTable { Name = "top_neurons", Columns = ["hook", "ranking", "rank", "neuron", "score", "class_means"], Rows = topNeurons },
                new ResultTable
                {
                    Name = "splits",
                    Columns = ["fold", "train", "test"],
                    Rows = [.. splits.Select((s, i) => (IReadOnlyList<JsonNode?>)[i, new JsonArray([.. s.Train.Select(r => (JsonNode)r)]), new JsonArray([.. s.Test.Select(r => (JsonNode)r)])])],
                },
            ],
            Artifacts = artifacts,
            Figures = figures,
        };
    }

    private static async Task<PluginResult> ApplyAsync(ApplyParameters p, IAnalysisContext context)
    {
        var ct = context.Cancellation;
        string name = p.Probe ?? throw new InvalidParametersException("mode 'apply' needs probe: the artifact name of a saved probe");
        var stored = await context.Artifacts.FindAsync(name, ct) ?? throw new InvalidParametersException($"there is no artifact '{name}'");
        var tensors = await context.Artifacts.LoadTensorsAsync(name, ct);
        Probe probe;
        try
        {
            probe = Probe.FromArtifact(tensors, stored.Metadata, name);
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
        var info = await context.Model.GetInfoAsync(ct);
        var rows = await ProbingDataset.LoadAsync(p, context.Artifacts, labelsRequired: false, ct);
        var (_, features) = await ActivationCollector.CollectAsync(context.Model, info, rows, [probe.Hook], probe.Position, p.BatchSize,
            done => context.ReportProgress(0.9 * done / rows.Count, $"activations {done}/{rows.Count}"), ct);
        var x = features[probe.Hook];
        if (x[0].Length != probe.Mean.Length && probe.Neurons is null)
            throw new InvalidParametersException($"probe '{name}' expects {probe.Mean.Length} features at {probe.Hook}, this model gives {x[0].Length}");
        var scores = probe.Scores(x);
        var predicted = Probe.Predict(scores);
        var table = rows.Select((r, i) => (IReadOnlyList<JsonNode?>)[i, r.Text, probe.Classes[predicted[i]], .. scores[i].Select(s => (JsonNode?)s)]).ToList();
        var summary = new JsonObject { ["probe"] = name, ["hook"] = probe.Hook, ["position"] = probe.Position, ["examples"] = rows.Count };
        if (rows.All(r => r.Label is not null))
            summary["accuracy"] = rows.Select((r, i) => r.Label == probe.Classes[predicted[i]]).Count(ok => ok) / (double)rows.Count;
        context.ReportProgress(1, "done");
        return new PluginResult
        {
            Summary = summary,
            Tables = [new ResultTable { Name = "predictions", Columns = ["row", "text", "predicted", .. probe.Classes.Select(c => $"p_{c}")], Rows = table }],
        };
    }

    /// <summary>
    /// The C with the best mean accuracy over 3 stratified folds of the training part (folds seeded
    /// with seed + 1; ties: the smaller C). Within a fold the grid runs from the smallest C up, each
    /// fit starting from the previous C's solution (a warm start, as along a regularisation path).
    /// </summary>
    private static double ChooseC(float[][] x, int[] labels, string[] classes, int[] train, double[] grid, int seed, ProbeFitOptions options)
    {
        var trainLabels = Pick(labels, train);
        int k = Math.Min(3, classes.Select((_, c) => trainLabels.Count(l => l == c)).Min());
        if (k < 2)
            return grid.Contains(1.0) ? 1.0 : grid[0];
        var inner = Splits.KFold(trainLabels, k, seed + 1);
        var trainX = Pick(x, train);
        var ordered = grid.Distinct().Order().ToArray();
        var accuracy = new double[ordered.Length];
        foreach (var (foldTrain, foldTest) in inner)
        {
            var fx = Pick(trainX, foldTrain);
            var fy = Pick(trainLabels, foldTrain);
            Probe? previous = null;
            for (int i = 0; i < ordered.Length; i++)
            {
                previous = Probe.Fit(fx, fy, classes, ordered[i], "", "", null, options, previous);
                accuracy[i] += Evaluate(previous, Pick(trainX, foldTest), Pick(trainLabels, foldTest), classes.Length).Accuracy / inner.Count;
            }
        }
        return ordered.Select((c, i) => (c, acc: accuracy[i])).OrderByDescending(t => t.acc).ThenBy(t => t.c).First().c;
    }

    /// <summary>The ks of a sweep over a width of <paramref name="d"/> neurons.</summary>
    internal static List<int> KList(KGrid grid, int d) => grid switch
    {
        // Gurnee et al., make_k_list: [1..8, 10, 12] + 16·2^i for i < ⌊log2 d⌋ − 3, then d if not last; those ≤ d.
        KGrid.Reference => [.. new[] { 1, 2, 3, 4, 5, 6, 7, 8, 10, 12 }
            .Concat(Enumerable.Range(0, Math.Max(0, (int)Math.Floor(Math.Log2(d)) - 3)).Select(i => 16 << i))
            .Append(d).Where(k => k <= d).Distinct().Order()],
        _ => [.. Enumerable.Range(0, 31).Select(i => 1 << i).TakeWhile(k => k < d).Append(d)],
    };

    internal static ProbeMetrics Evaluate(Probe probe, float[][] x, int[] labels, int classes)
    {
        var scores = probe.Scores(x);
        return ProbeMetrics.Of(labels, Probe.Predict(scores), scores, classes);
    }

    private static ProbeMetrics Average(IEnumerable<ProbeMetrics> all)
    {
        var list = all.ToList();
        return new ProbeMetrics(list.Average(m => m.Accuracy), list.Average(m => m.F1), list.Average(m => m.Precision), list.Average(m => m.Recall), list.Average(m => m.RocAuc));
    }

    private static T[] Pick<T>(T[] items, int[] index) => [.. index.Select(i => items[i])];
}
