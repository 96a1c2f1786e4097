using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.Steering.Export;
using InterpMesh.Plugins.Steering.Vectors;
using TorchSharp;

namespace InterpMesh.Plugins.Steering;

/// <summary>
/// Steering vectors (contrastive mean difference, as CAA/ActAdd; first principal component of the
/// paired differences, as repeng), their application with a coefficient sweep, function vectors
/// (Todd et al. 2024), and export as a llama.cpp GGUF control vector. Definitions:
/// docs/plugins/steering.md.
/// </summary>
public sealed class SteeringPlugin() : AnalysisPlugin<SteeringParameters>(
    id: "steering",
    version: "1.1.0",
    description: "Extract steering vectors from contrastive pairs (mean difference, PCA), sweep their coefficient during generation, compute function vectors, export GGUF control vectors.",
    produces: ["table:per_layer", "table:sweep", "table:samples", "table:heads", "artifact:vector", "artifact:gguf"])
{
    protected override Task<PluginResult> RunAsync(SteeringParameters parameters, IAnalysisContext context) => parameters switch
    {
        ApplyParameters apply => ApplyAsync(apply, context),
        FunctionVectorParameters fv => FunctionVectorAsync(fv, context),
        ExtractParameters extract => ExtractAsync(extract, context),
        _ => throw new InvalidParametersException("mode must be extract, apply or function_vector"),
    };

    private static List<string> Texts(IReadOnlyList<string>? texts, string name, bool required = true)
    {
        if (texts is null)
            return required ? throw new InvalidParametersException($"{name} is required") : [];
        var list = texts.ToList();
        if (required && list.Count == 0)
            throw new InvalidParametersException($"{name} is empty; give at least one text");
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i].Length == 0)
                throw new InvalidParametersException($"{name}[{i}] is empty");
        }
        return list;
    }

    private static int Layer(int layer, ModelInfo info, string field) => layer >= 0 && layer < info.NLayers ? layer
        : throw new InvalidParametersException($"{field} {layer} is out of range; this model has layers 0..{info.NLayers - 1}");

    private static string Hook(int layer) => $"blocks.{layer}.hook_resid_post";

    private static async Task<PluginResult> ExtractAsync(ExtractParameters p, IAnalysisContext context)
    {
        var ct = context.Cancellation;
        var info = await context.Model.GetInfoAsync(ct);
        var positive = Texts(p.Positive, "positive");
        var negative = Texts(p.Negative, "negative");
        if (positive.Count != negative.Count)
            throw new InvalidParametersException($"positive has {positive.Count} texts and negative {negative.Count}; give them as pairs, one negative per positive");
        var layers = p.Layers is { } ls ? ls.Select(x => Layer(x, info, "layer")).ToList() : [.. Enumerable.Range(0, info.NLayers)];
        int batch = p.BatchSize;
        var hooks = layers.Select(Hook).ToList();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var pos = await ModelCalls.LastTokenAsync(context.Model, positive, hooks, batch, ct);
        context.ReportProgress(0.4, "positive activations");
        var neg = await ModelCalls.LastTokenAsync(context.Model, negative, hooks, batch, ct);
        double seconds = clock.Elapsed.TotalSeconds;
        context.ReportProgress(0.8, "negative activations");

        var rows = new List<IReadOnlyList<JsonNode?>>();
        var meanDiffs = new Dictionary<int, float[]>();
        var pcas = new Dictionary<int, float[]>();
        foreach (int layer in layers)
        {
            var md = SteeringMath.MeanDifference(pos[Hook(layer)], neg[Hook(layer)]);
            var pc = SteeringMath.PrincipalComponent(pos[Hook(layer)], neg[Hook(layer)], md);
            var (gap, accuracy) = SteeringMath.Separation(pos[Hook(layer)], neg[Hook(layer)], md);
            meanDiffs[layer] = md;
            pcas[layer] = pc;
            rows.Add([layer, Hook(layer), SteeringMath.Norm(md), gap, accuracy, SteeringMath.Cosine(md, pc)]);
        }
        int best = layers.OrderByDescending(l => (double)rows[layers.IndexOf(l)][3]!).First();

        string name = p.SaveAs ?? $"steering/{context.JobId}";
        string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { positive, negative }))));
        var metadata = new JsonObject
        {
            ["kind"] = "interpmesh.steering_vector",
            ["model"] = context.Model.Name,
            ["hook"] = "blocks.{layer}.hook_resid_post",
            ["position"] = "last",
            ["methods"] = new JsonArray("mean_diff", "pca"),
            ["layers"] = new JsonArray([.. layers.Select(l => (JsonNode)l)]),
            ["pairs"] = positive.Count,
            ["dataset_sha256"] = hash,
            ["norms"] = new JsonObject(layers.Select(l => KeyValuePair.Create(l.ToString(System.Globalization.CultureInfo.InvariantCulture), (JsonNode?)SteeringMath.Norm(meanDiffs[l])))),
        };
        var tensors = new Dictionary<string, torch.Tensor>();
        foreach (int layer in layers)
        {
            tensors[$"mean_diff.{layer}"] = torch.tensor(meanDiffs[layer]);
            tensors[$"pca.{layer}"] = torch.tensor(pcas[layer]);
        }
        var artifacts = new List<string>();
        IReadOnlyList<int>? ggufSkipped = null;
        await context.Artifacts.SaveTensorsAndDisposeAsync(name, tensors, metadata, ct);
        artifacts.Add(name);
        if (p.ExportGguf)
        {
            var gguf = GgufControlVector.Write(string.IsNullOrEmpty(info.ModelType) ? info.Architecture : info.ModelType, info.NLayers, meanDiffs, p.GgufNormalize);
            if (gguf.SkippedBlocks.Count == layers.Count)
                throw new InvalidParametersException("export_gguf: llama.cpp cannot steer block 0's output and no other layer was extracted; add layers ≥ 1");
            await context.Artifacts.SaveFilesAsync($"{name}-gguf", new Dictionary<string, byte[]> { ["control_vector.gguf"] = gguf.File },
                new JsonObject
                {
                    ["kind"] = "llama.cpp control vector",
                    ["source"] = name,
                    ["method"] = "mean_diff",
                    ["normalized"] = p.GgufNormalize,
                    ["layer_convention"] = "direction.L = blocks.L.hook_resid_post (llama.cpp adds it to block L's output)",
                    ["skipped_blocks"] = new JsonArray([.. gguf.SkippedBlocks.Select(b => (JsonNode)b)]),
                }, ct);
            artifacts.Add($"{name}-gguf");
            ggufSkipped = gguf.SkippedBlocks;
        }
        context.ReportProgress(1, "done");
        return new PluginResult
        {
            Summary = new JsonObject
            {
                ["model"] = context.Model.Name,
                ["pairs"] = positive.Count,
                ["best_layer"] = best,
                ["vector"] = name,
                ["pairs_per_second"] = positive.Count / Math.Max(1e-9, seconds),
                ["dataset_sha256"] = hash,
                ["gguf_skipped_blocks"] = ggufSkipped is null ? null : new JsonArray([.. ggufSkipped.Select(b => (JsonNode)b)]),
            },
            Tables = [new ResultTable { Name = "per_layer", Columns = ["layer", "hook", "norm", "projection_gap", "direction_accuracy", "cosine_mean_diff_pca"], Rows = rows }],
            Artifacts = artifacts,
        };
    }

    private static async Task<int[]> SingleTokens(IModelClient model, ModelInfo info, IReadOnlyList<string> words, string field, CancellationToken ct)
    {
        var ids = await model.TokenizeAsync(words, ct);
        return [.. ids.Select((t, i) => (info.BosTokenId is int bos && t.Length > 0 && t[0] == bos ? t[1..] : t) is [var one] ? one
            : throw new InvalidParametersException($"{field}[{i}] '{words[i]}' is not a single token"))];
    }

    /// <summary>
    /// The direction for <paramref name="layer"/>: from an extract artifact (<c>mean_diff.L</c> /
    /// <c>pca.L</c>), or from a GGUF control vector in the artifact (<c>direction.L</c>).
    /// </summary>
    private static async Task<(float[] Vector, string Method)> LoadVectorAsync(IAnalysisContext context, string name, SteeringMethod? method, int layer, int dModel, CancellationToken ct)
    {
        var stored = await context.Artifacts.FindAsync(name, ct) ?? throw new InvalidParametersException($"vector: no artifact named '{name}'");
        var ggufFiles = stored.Files.Where(f => f.Name.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)).ToList();
        if (ggufFiles.Count > 0)
        {
            if (ggufFiles.Count > 1)
                throw new InvalidParametersException($"vector '{name}' holds {ggufFiles.Count} GGUF files; upload one control vector per artifact");
            if (method is not null)
                throw new InvalidParametersException($"vector '{name}' is a GGUF control vector, which has one direction per block; drop method");
            var files = await context.Artifacts.LoadFilesAsync(name, ct);
            var cv = GgufControlVector.Read(files[ggufFiles[0].Name], ggufFiles[0].Name);
            if (!cv.Directions.TryGetValue(layer, out var d))
                throw new InvalidParametersException($"layer: control vector '{name}' has no direction.{layer} (it has {string.Join(", ", cv.Directions.Keys.Order().Select(k => $"direction.{k}"))}); direction.L steers blocks.L.hook_resid_post");
            if (d.Length != dModel)
                throw new InvalidParametersException($"vector: control vector '{name}' has {d.Length} values per direction but this model's d_model is {dModel}");
            return (d, "gguf_control_vector");
        }
        string key = method == SteeringMethod.Pca ? "pca" : "mean_diff";
        var tensors = await context.Artifacts.LoadTensorsAsync(name, ct);
        try
        {
            return tensors.TryGetValue($"{key}.{layer}", out var v) ? (v.to(torch.ScalarType.Float32).data<float>().ToArray(), key)
                : throw new InvalidParametersException($"vector '{name}' has no {key} direction for layer {layer} (it has {string.Join(", ", tensors.Keys)})");
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    private static async Task<PluginResult> ApplyAsync(ApplyParameters p, IAnalysisContext context)
    {
        var ct = context.Cancellation;
        var info = await context.Model.GetInfoAsync(ct);
        string name = p.Vector ?? throw new InvalidParametersException("mode 'apply' needs vector: the artifact saved by extract");
        int layer = Layer(p.Layer, info, "layer");
        var coefficients = p.Coefficients.ToList();
        foreach (var c in coefficients)
        {
            if (!double.IsFinite(c))
                throw new InvalidParametersException($"coefficient {c} is not a finite number");
        }
        var prompts = Texts(p.Prompts, "prompts");
        string positions = p.Positions.ToString().ToLowerInvariant();
        int maxNew = p.MaxNewTokens;
        bool tokens = p.Target is not null || p.Classifier is null;
        var target = tokens ? await SingleTokens(context.Model, info, Texts(p.Target, "target"), "target", ct) : [];
        var control = tokens ? await SingleTokens(context.Model, info, Texts(p.Control, "control"), "control", ct) : [];
        var classifier = p.Classifier is { } cl ? await SavedProbe.LoadAsync(context.Artifacts, cl.Probe, cl.Class, ct) : null;

        var (vector, method) = await LoadVectorAsync(context, name, p.Method, layer, info.DModel, ct);

        var sweep = new List<IReadOnlyList<JsonNode?>>();
        var samples = new List<IReadOnlyList<JsonNode?>>();
        var lengths = await context.Model.TokenizeAsync(prompts, ct);
        for (int ci = 0; ci < coefficients.Count; ci++)
        {
            double c = coefficients[ci];
            var add = new Contracts.V1.Intervention { Hook = Hook(layer), Op = InterventionOp.Add, Value = ModelCalls.Wire(vector, (float)c) };
            // Behaviour: log-probability mass of target vs control tokens at the last prompt position, the vector added at every prompt position.
            double? diff = null, pTarget = null, pControl = null;
            if (tokens)
            {
                var logp = await ModelCalls.LastLogProbsAsync(context.Model, prompts, positions == "generated" ? [] : [add], ct);
                diff = logp.Average(row => target.Average(t => (double)row[t]) - control.Average(t => (double)row[t]));
                pTarget = logp.Average(row => target.Sum(t => Math.Exp(row[t])));
                pControl = logp.Average(row => control.Sum(t => Math.Exp(row[t])));
            }
            var generations = new List<int[]>();
            for (int i = 0; i < prompts.Count; i++)
            {
                var request = new GenerateRequest { Prompts = { new Input { Text = prompts[i] } }, MaxNewTokens = maxNew };
                var iv = add.Clone();
                int n = lengths[i].Length;
                if (positions == "prompt")
                    iv.Positions.AddRange(Enumerable.Range(0, n));
                else if (positions == "generated")
                    iv.Positions.AddRange(Enumerable.Range(n, maxNew));
                request.Interventions.Add(iv);
                var ids = new List<int>();
                await foreach (var m in context.Model.GenerateAsync(request, ct))
                    ids.AddRange(m.TokenIds.Where(t => t >= 0));
                string text = (await context.Model.DetokenizeAsync([[.. ids]], ct))[0];
                samples.Add([c, prompts[i], text]);
                generations.Add([.. lengths[i], .. ids]);
                context.ReportProgress((ci + (i + 1.0) / prompts.Count) / coefficients.Count, $"c={c}: {prompts[i]} | {text}");
            }
            // The saved probe reads the steered text (prompt + generation) unsteered, as a judge would.
            double? classified = classifier is null ? null : (await classifier.ProbabilitiesAsync(context.Model, generations, ct)).Average();
            sweep.Add([c, diff, pTarget, pControl, pTarget is double pt && pControl is double pc ? pt / Math.Max(1e-12, pt + pc) : null, classified]);
        }
        return new PluginResult
        {
            Summary = new JsonObject { ["vector"] = name, ["method"] = method, ["layer"] = layer, ["positions"] = positions, ["coefficients"] = new JsonArray([.. coefficients.Select(c => (JsonNode)c)]) },
            Tables =
            [
                new ResultTable { Name = "sweep", Columns = ["coefficient", "logit_diff", "p_target", "p_control", "target_share", "classifier_p"], Rows = sweep },
                new ResultTable { Name = "samples", Columns = ["coefficient", "prompt", "generation"], Rows = samples },
            ],
        };
    }

    private static async Task<PluginResult> FunctionVectorAsync(FunctionVectorParameters p, IAnalysisContext context)
    {
        var ct = context.Cancellation;
        var info = await context.Model.GetInfoAsync(ct);
        var icl = Texts(p.IclPrompts, "icl_prompts");
        var shuffled = Texts(p.ShuffledPrompts, "shuffled_prompts");
        var zero = Texts(p.ZeroShot, "zero_shot");
        var answers = await SingleTokens(context.Model, info, Texts(p.Answers, "answers"), "answers", ct);
        var zeroAnswers = await SingleTokens(context.Model, info, Texts(p.ZeroShotAnswers, "zero_shot_answers"), "zero_shot_answers", ct);
        if (answers.Length != shuffled.Count || zeroAnswers.Length != zero.Count)
            throw new InvalidParametersException($"give one answer per shuffled prompt ({shuffled.Count}) and per zero-shot prompt ({zero.Count}); got {answers.Length} and {zeroAnswers.Length}");
        int top = p.TopHeads;
        int layer = Layer(p.Layer, info, "layer");

        // Mean output of every head at the last token of the in-context prompts (hook_result: the head's write into the residual stream).
        var hooks = Enumerable.Range(0, info.NLayers).Select(x => $"blocks.{x}.attn.hook_result").ToList();
        var outputs = await ModelCalls.LastTokenAsync(context.Model, icl, hooks, 32, ct);
        int d = info.DModel, heads = info.NHeads;
        var mean = new float[info.NLayers, heads][];
        for (int x = 0; x < info.NLayers; x++)
            for (int h = 0; h < heads; h++)
                mean[x, h] = [.. Enumerable.Range(0, d).Select(j => (float)outputs[hooks[x]].Average(row => row[h * d + j]))];
        context.ReportProgress(0.2, "mean head outputs");

        // Causal indirect effect: gain in P(answer) on shuffled-label prompts when one head's output at the last position is its mean.
        double P(float[][] logp, int[] answer) => logp.Select((row, i) => Math.Exp(row[answer[i]])).Average();
        int last = await ModelCalls.PaddedLengthAsync(context.Model, shuffled, ct) - 1;
        double baseline = P(await ModelCalls.LastLogProbsAsync(context.Model, shuffled, [], ct), answers);
        var effects = new List<(int Layer, int Head, double Effect)>();
        for (int x = 0; x < info.NLayers; x++)
        {
            for (int h = 0; h < heads; h++)
            {
                var patch = new Contracts.V1.Intervention { Hook = hooks[x], Op = InterventionOp.Set, Value = ModelCalls.Wire(mean[x, h]), Heads = { h }, Positions = { last } };
                effects.Add((x, h, P(await ModelCalls.LastLogProbsAsync(context.Model, shuffled, [patch], ct), answers) - baseline));
            }
            context.ReportProgress(0.2 + 0.6 * (x + 1) / info.NLayers, $"indirect effects, layer {x}");
        }
        var chosen = effects.OrderByDescending(e => e.Effect).Take(Math.Min(top, effects.Count)).ToList();
        var fv = new float[d];
        foreach (var (x, h, _) in chosen)
            for (int j = 0; j < d; j++)
                fv[j] += mean[x, h][j];

        // Zero-shot accuracy without and with the function vector at the last position.
        int zeroLast = await ModelCalls.PaddedLengthAsync(context.Model, zero, ct) - 1;
        double Accuracy(float[][] logp) => logp.Select((row, i) => Array.IndexOf(row, row.Max()) == zeroAnswers[i] ? 1.0 : 0.0).Average();
        double before = Accuracy(await ModelCalls.LastLogProbsAsync(context.Model, zero, [], ct));
        double after = Accuracy(await ModelCalls.LastLogProbsAsync(context.Model, zero,
            [new Contracts.V1.Intervention { Hook = Hook(layer), Op = InterventionOp.Add, Value = ModelCalls.Wire(fv), Positions = { zeroLast } }], ct));

        string name = $"steering/{context.JobId}/function-vector";
        await context.Artifacts.SaveTensorsAndDisposeAsync(name, new Dictionary<string, torch.Tensor> { [$"function_vector.{layer}"] = torch.tensor(fv) },
            new JsonObject { ["kind"] = "interpmesh.function_vector", ["model"] = context.Model.Name, ["layer"] = layer, ["heads"] = new JsonArray([.. chosen.Select(c => (JsonNode)$"L{c.Layer}H{c.Head}")]) }, ct);
        context.ReportProgress(1, "done");
        return new PluginResult
        {
            Summary = new JsonObject
            {
                ["baseline_p_answer_shuffled"] = baseline,
                ["top_heads"] = new JsonArray([.. chosen.Select(c => (JsonNode)$"L{c.Layer}H{c.Head}")]),
                ["zero_shot_accuracy"] = before,
                ["zero_shot_accuracy_with_fv"] = after,
                ["layer"] = layer,
                ["vector"] = name,
            },
            Tables = [new ResultTable { Name = "heads", Columns = ["layer", "head", "indirect_effect"], Rows = [.. effects.OrderByDescending(e => e.Effect).Select(e => (IReadOnlyList<JsonNode?>)[e.Layer, e.Head, e.Effect])] }],
            Artifacts = [name],
        };
    }
}
