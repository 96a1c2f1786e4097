using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.AnalysisWorker.Jobs;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using static TorchSharp.torch;
using HookPlan = InterpMesh.Runtime.Hooks.HookPlan;

namespace InterpMesh.Plugins.Tests;

/// <summary>The "concepts" toy model behind a gateway with the built-in plugins.</summary>
public sealed class ConceptsMeshFixture() : PluginMeshFixture(RepoPaths.Models("concepts"));

/// <summary>
/// The probing plugin end to end on the "concepts" toy model, whose card says sentiment is
/// linearly readable at the last token of "… . what a" from layer 0 on.
/// </summary>
public sealed class ProbingEndToEndTests(ConceptsMeshFixture mesh) : IClassFixture<ConceptsMeshFixture>
{
    private static readonly string[][] Nouns = [["dog", "cat", "bird", "horse"], ["apple", "cake", "pie", "soup"], ["ball", "game", "team", "race"]];
    private static readonly string[] Positive = ["happy", "good", "bright", "warm", "kind"];
    private static readonly string[] Negative = ["sad", "bad", "dark", "cold", "cruel"];

    /// <summary>"the dogs are very happy . what a" → positive, in the toy grammar.</summary>
    private static List<(string Text, string Label)> Sentiment(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(i =>
        {
            bool positive = i % 2 == 0, plural = rng.Next(2) == 0;
            string noun = Nouns[rng.Next(3)][rng.Next(4)] + (plural ? "s" : "");
            string adverb = rng.Next(2) == 0 ? "" : new[] { "very ", "so ", "quite " }[rng.Next(3)];
            string adjective = (positive ? Positive : Negative)[rng.Next(5)];
            return ($"the {noun} {(plural ? "are" : "is")} {adverb}{adjective} . what a", positive ? "positive" : "negative");
        })];
    }

    private async Task<Job> Run(object parameters)
    {
        var client = new AnalysisService.AnalysisServiceClient(mesh.Channel);
        using var call = client.RunAnalysis(new AnalysisRequest { Plugin = "probing", ParametersJson = JsonSerializer.Serialize(parameters) }, Mesh.As(Mesh.AliceKey));
        Job? final = null;
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            final = e.Finished ?? final;
        return final!;
    }

    private static List<JsonElement> Rows(Job job, string table) =>
        [.. JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == table).RowsJson).RootElement.EnumerateArray()];

    [Fact]
    public async Task Sentiment_is_found_at_every_layer_with_a_depth_a_sparse_sweep_and_saved_probes()
    {
        var data = Sentiment(160, seed: 1);
        var job = await Run(new
        {
            rows = data.Select(d => new { text = d.Text, label = d.Label }),
            hooks = new[] { "blocks.*.hook_resid_post", "blocks.*.mlp.hook_post" },
            position = "last",
            holdout = 0.25,
            seed = 3,
            sparse = new { ks = new[] { 1, 2, 4, 8, 16, 64 }, top_neurons = 5 },
            save_prefix = "probes/sentiment",
        });
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var perHook = Rows(job, "per_hook").ToDictionary(r => r[0].GetString()!);
        // In forward order: a block's MLP output comes before its residual stream output.
        Assert.Equal(["blocks.0.mlp.hook_post", "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"], perHook.Keys);
        foreach (var hook in new[] { "blocks.0.hook_resid_post", "blocks.1.hook_resid_post" })
            Assert.True(perHook[hook][2].GetDouble() >= 0.95, $"{hook}: accuracy {perHook[hook][2]}");
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.Equal(0, summary["concept_depth"]!["blocks.*.hook_resid_post"]!["layer"]!.GetValue<int>());
        var perK = Rows(job, "per_k");
        Assert.Equal(6 * 6, perK.Count);
        Assert.Contains(perK, r => r[1].GetString() == "mean_diff" && r[2].GetInt32() == 64 && r[3].GetDouble() >= 0.9);
        Assert.Equal(4, job.Result.Artifacts.Count);
        Assert.Equal(["accuracy_by_layer", "f1_by_k"], job.Result.Figures.Select(f => f.Name));
        Assert.All(job.Result.Figures, f => Assert.StartsWith("<svg", f.Content.ToStringUtf8(), StringComparison.Ordinal));

        // Shuffled labels: nothing to find.
        var rng = new Random(9);
        var shuffled = await Run(new
        {
            rows = data.Select(d => new { text = d.Text, label = rng.Next(2) == 0 ? "x" : "y" }),
            hooks = new[] { "blocks.1.hook_resid_post" },
            seed = 3,
            sparse = new { enabled = false },
            save_probes = false,
        });
        Assert.True(shuffled.State == JobState.Succeeded, shuffled.Error);
        Assert.InRange(Rows(shuffled, "per_hook")[0][2].GetDouble(), 0.2, 0.8);

        // The saved probe, applied to new text through the plugin, gives what the stored weights give
        // on activations computed here (second path: the runtime in this process).
        var fresh = Sentiment(40, seed: 77);
        var applied = await Run(new { mode = "apply", probe = "probes/sentiment/blocks.1.hook_resid_post", rows = fresh.Select(d => new { text = d.Text, label = d.Label }) });
        Assert.True(applied.State == JobState.Succeeded, applied.Error);
        Assert.True(JsonNode.Parse(applied.Result.SummaryJson)!["accuracy"]!.GetValue<double>() >= 0.95);
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        var weights = await store.LoadTensorsAsync("probes/sentiment/blocks.1.hook_resid_post");
        using var model = ModelLoader.Load(RepoPaths.Models("concepts"));
        var predictions = Rows(applied, "predictions");
        using (inference_mode())
        using (NewDisposeScope())
        {
            for (int i = 0; i < fresh.Count; i++)
            {
                var (ids, mask) = TokenBatch.Pad([model.RequireTokenizer().Encode(fresh[i].Text)], PaddingSide.Right);
                TorchSharp.torch.Tensor? last = null;
                model.Transformer.Forward(ids, mask, HookPlan.Build(model.Transformer.Hooks, [new CaptureRequest(["blocks.1.hook_resid_post"], InterpMesh.Runtime.Hooks.PositionSelection.Last)], null),
                    (_, t) => last = t.to(ScalarType.Float64).reshape(-1), LogitsMode.None);
                var z = (last! - weights["mean"]) / weights["std"];
                double p = (z.dot(weights["weight"][0]) + weights["bias"][0]).sigmoid().item<double>();
                Assert.True(Math.Abs(p - predictions[i][4].GetDouble()) < 1e-5, $"row {i}: p(positive) {predictions[i][4]} from the plugin, {p} recomputed");
                Assert.Equal(p > 0.5 ? "positive" : "negative", predictions[i][2].GetString());
            }
        }
    }

    /// <summary>Features of each text at <paramref name="hook"/>, computed in this process (second path): the last token, or the max over tokens.</summary>
    private static float[][] Features(IReadOnlyList<string> texts, string hook, bool max)
    {
        using var model = ModelLoader.Load(RepoPaths.Models("concepts"));
        var result = new float[texts.Count][];
        using (inference_mode())
        {
            for (int i = 0; i < texts.Count; i++)
            {
                using var scope = NewDisposeScope();
                var (ids, mask) = TokenBatch.Pad([model.RequireTokenizer().Encode(texts[i])], PaddingSide.Right);
                TorchSharp.torch.Tensor? captured = null;
                model.Transformer.Forward(ids, mask, HookPlan.Build(model.Transformer.Hooks, [new CaptureRequest([hook], max ? InterpMesh.Runtime.Hooks.PositionSelection.All : InterpMesh.Runtime.Hooks.PositionSelection.Last)], null),
                    (_, t) => captured = t.to(ScalarType.Float32), LogitsMode.None);
                var v = max ? captured![0].amax([0]) : captured!.reshape(-1);
                result[i] = v.contiguous().data<float>().ToArray();
            }
        }
        return result;
    }

    /// <summary>Sentiment with a fifth of the labels flipped, so that no layer reaches accuracy 1.</summary>
    private static List<(string Text, string Label)> NoisySentiment(int n, int seed)
    {
        var rng = new Random(seed + 1000);
        return [.. Sentiment(n, seed).Select(d => rng.NextDouble() < 0.2 ? (d.Text, d.Label == "positive" ? "negative" : "positive") : d)];
    }

    [Fact]
    public async Task The_concept_depth_preset_equals_scikit_learn_on_luckfort_cds_split_and_probe()
    {
        var data = NoisySentiment(150, seed: 4);
        var job = await Run(new { preset = "concept_depth", rows = data.Select(d => new { text = d.Text, label = d.Label }), save_probes = false });
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.Equal("concept_depth", summary["preset"]!.GetValue<string>());
        Assert.Equal("sklearn", summary["split"]!["kind"]!.GetValue<string>());

        // The split: scikit-learn's train_test_split(test_size=0.4, random_state=42), index for index.
        var split = Rows(job, "splits").Single();
        var reference = SklearnProbingTests.Sklearn(new { op = "split", n = new[] { data.Count }, test_size = 0.4, seed = 42 })["splits"]![0]!;
        Assert.Equal(reference["train"]!.AsArray().Select(v => v!.GetValue<int>()), split[1].EnumerateArray().Select(v => v.GetInt32()));
        Assert.Equal(reference["test"]!.AsArray().Select(v => v!.GetValue<int>()), split[2].EnumerateArray().Select(v => v.GetInt32()));

        // Per layer: scikit-learn's LogisticRegression(penalty='l2') on the same activations
        // (captured here, in this process) and split, with Luckfort/CD's metrics.
        string[] hooks = ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"];
        var perHook = Rows(job, "per_hook").ToDictionary(r => r[0].GetString()!);
        Assert.Equal(hooks, perHook.Keys);
        // As Luckfort/CD read them: post_attention_layernorm's output, i.e. TransformerLens' hook_normalized
        // times the norm's gain plus its bias (GPT-2's ln_2), the weights read through the gateway.
        var norms = await Direct.WeightsAsync(mesh.Channel, "blocks.0.ln2.w", "blocks.0.ln2.b", "blocks.1.ln2.w", "blocks.1.ln2.b");
        var layers = hooks.Select((h, l) =>
        {
            var gain = norms[$"blocks.{l}.ln2.w"].ToFloat32();
            var bias = norms[$"blocks.{l}.ln2.b"].ToFloat32();
            return Features([.. data.Select(d => d.Text)], h, max: false).Select(r => r.Select((v, j) => v * gain[j] + bias[j]).ToArray()).ToList();
        }).ToList();
        var sk = SklearnProbingTests.Sklearn(new { op = "cd", layers, y = data.Select(d => d.Label == "positive" ? 1 : 0) })["layers"]!.AsArray();
        int nTest = (int)Math.Ceiling(0.4 * data.Count);
        for (int l = 0; l < hooks.Length; l++)
        {
            double accuracy = perHook[hooks[l]][2].GetDouble(), f1 = perHook[hooks[l]][3].GetDouble(), auc = perHook[hooks[l]][6].GetDouble();
            string where = $"{hooks[l]}: ours acc {accuracy} f1 {f1} auc {auc}, scikit-learn {sk[l]!.ToJsonString()}";
            // Stated tolerance: accuracy within one held-out example, F1 within 0.02, ROC-AUC within 0.005
            // (observed: all three equal to 1e-15 on both layers; scikit-learn converges in 45–47 of its 100 iterations).
            Assert.True(Math.Abs(accuracy - sk[l]!["accuracy"]!.GetValue<double>()) <= 1.0 / nTest + 1e-12, where);
            Assert.True(Math.Abs(f1 - sk[l]!["f1"]!.GetValue<double>()) <= 0.02, where);
            Assert.True(Math.Abs(auc - sk[l]!["auc"]!.GetValue<double>()) <= 0.005, where);
            Assert.InRange(accuracy, 0.55, 0.95);
        }
    }

    [Fact]
    public async Task Max_aggregation_reads_each_features_largest_value_over_the_rows_tokens()
    {
        var data = Sentiment(40, seed: 8);
        var job = await Run(new
        {
            rows = data.Select(d => new { text = d.Text, label = d.Label }),
            hooks = new[] { "blocks.1.hook_resid_post" },
            position = "max",
            c = 1.0,
            sparse = new { enabled = true, rankings = new[] { "svm", "mean_diff" }, k_grid = "reference" },
            save_prefix = "probes/max",
        });
        Assert.True(job.State == JobState.Succeeded, job.Error);
        // The saved probe's standardisation holds the training rows' mean and std of the features:
        // recomputed here from max-over-tokens activations of the training rows the splits table names.
        var train = Rows(job, "splits").Single()[1].EnumerateArray().Select(v => v.GetInt32()).ToArray();
        var features = Features([.. train.Select(i => data[i].Text)], "blocks.1.hook_resid_post", max: true);
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        var weights = await store.LoadTensorsAsync("probes/max/blocks.1.hook_resid_post");
        var mean = weights["mean"].data<double>().ToArray();
        for (int j = 0; j < mean.Length; j++)
        {
            double expected = features.Average(r => (double)r[j]);
            Assert.True(Math.Abs(mean[j] - expected) <= 1e-4 * Math.Max(1, Math.Abs(expected)), $"feature {j}: mean {mean[j]} vs {expected}");
        }
        // A last-token probe's features differ (so max is not last under another name).
        var last = Features([.. train.Select(i => data[i].Text)], "blocks.1.hook_resid_post", max: false);
        Assert.True(Enumerable.Range(0, mean.Length).Max(j => Math.Abs(mean[j] - last.Average(r => (double)r[j]))) > 0.01);
        // k grid "reference" on d_model 64: 1–8, 10, 12, 16, 32, 64; per ranking.
        var perK = Rows(job, "per_k");
        Assert.Equal([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64], perK.Where(r => r[1].GetString() == "svm").Select(r => r[2].GetInt32()));
        Assert.Equal("balanced", JsonNode.Parse(job.Result.SummaryJson)!["probe"]!["sparse_class_weight"]!.GetValue<string>());
    }

    [Theory]
    [InlineData("""{"rows": []}""", "the dataset is empty")]
    [InlineData("""{"rows": [{"text": "the dog is happy . what a", "label": "a"}, {"text": "the cat is sad . what a", "label": "a"}]}""", "every row has the label 'a'")]
    [InlineData("""{"texts": ["the dog is happy . what a", "the cat is sad . what a"], "labels": ["p"]}""", "texts has 2 entries but labels has 1")]
    [InlineData("""{"texts": ["the dog is happy", "the cat is sad", "the dog is good", "the cat is bad"], "labels": [1, 0, 1, 0], "hooks": ["blocks.0.hook_resid_pots"]}""", "hook 'blocks.0.hook_resid_pots' matches no hook of this model; closest: blocks.0.hook_resid_post")]
    [InlineData("""{"rows": [{"text": "the dog is happy", "label": 1, "target_index": 2}, {"text": "the cat is sad", "label": 0, "target_index": 9}, {"text": "the dog is good", "label": 1, "target_index": 1}, {"text": "the cat is bad", "label": 0, "target_index": 1}], "position": "target"}""", "row 1: target token 9 is outside its 5 tokens")]
    [InlineData("""{"rows": [{"text": "", "label": 1}, {"text": "the cat is sad", "label": 0}]}""", "row 0 has an empty text")]
    [InlineData("""{"texts": ["the dog is happy", "the cat is sad", "the dog is good", "the cat is bad"], "labels": [1, 0, 1, 0], "split": "sklearn", "folds": 2}""", "parameters.split: sklearn is a single held-out split; leave out folds")]
    [InlineData("""{"texts": ["the dog is happy", "the cat is sad", "the dog is good", "the cat is bad"], "labels": [1, 0, 1, 0], "split": "sklearn", "holdout": 0.75, "seed": 1}""", "parameters.split: the training part (1 rows, seed 1) lacks a class")]
    [InlineData("""{"preset": "concept_depth", "texts": ["the dog is happy", "the cat is sad"], "labels": [1, 0], "hooks": ["blocks.0.hook_resid_post"]}""", "parameters.hooks: preset concept_depth sets hooks")]
    public async Task Bad_input_fails_the_job_as_invalid_argument_naming_the_row(string parameters, string message)
    {
        var client = new AnalysisService.AnalysisServiceClient(mesh.Channel);
        using var call = client.RunAnalysis(new AnalysisRequest { Plugin = "probing", ParametersJson = parameters }, Mesh.As(Mesh.AliceKey));
        Job? final = null;
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            final = e.Finished ?? final;
        Assert.Equal(JobState.Failed, final!.State);
        Assert.Equal("INVALID_ARGUMENT", final.ErrorCode);
        Assert.Contains(message, final.Error, StringComparison.Ordinal);
    }
}
