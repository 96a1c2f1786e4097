using System.Text.Json;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Loading;
using InterpMesh.ToyModels.Analysis;
using InterpMesh.ToyModels.Tasks;
using static TorchSharp.torch;

namespace InterpMesh.ToyModels.Tests;

/// <summary>
/// The shipped toy models still do what their cards say. A regression anywhere in the runtime
/// (loader, tokenizer, forward, hooks) shows up here as a broken toy.
/// </summary>
public sealed class ShippedToyModelTests : TorchTest
{
    /// <summary>The card's numbers, as the trainer wrote them.</summary>
    private static JsonElement Mechanism(string name) =>
        JsonDocument.Parse(File.ReadAllText(RepoPaths.Models($"{name}/mechanism.json"))).RootElement.Clone();

    private static double CardMetric(JsonElement mechanism, string metric) =>
        mechanism.GetProperty("metrics").EnumerateArray().First(m => m.GetProperty("name").GetString() == metric).GetProperty("value").GetDouble();

    private static List<(int Layer, int Head)> CardHeads(JsonElement mechanism, params string[] roles) =>
        mechanism.GetProperty("heads").EnumerateArray()
            .Where(h => roles.Contains(h.GetProperty("role").GetString()))
            .Select(h => (h.GetProperty("layer").GetInt32(), h.GetProperty("head").GetInt32())).ToList();

    public static TheoryData<string, string, double> Headlines => new()
    {
        { "induction", "induction_accuracy", 0.90 },
        { "retrieval", "recall_accuracy", 0.95 },
        { "concepts", "sentiment_accuracy", 0.95 },
        { "concepts", "agreement_accuracy", 0.95 },
        { "concepts", "topic_accuracy", 0.95 },
        { "functions", "icl_accuracy", 0.95 },
    };

    [Theory]
    [MemberData(nameof(Headlines))]
    public void Shipped_model_reaches_the_accuracy_its_card_states(string name, string metric, double threshold)
    {
        using var model = ModelLoader.Load(RepoPaths.Models(name));
        var task = ToyCatalog.Get(name);
        double measured = task.Evaluate(model.Transformer).First(m => m.Name == metric).Value;
        double card = CardMetric(Mechanism(name), metric);
        Assert.True(measured >= threshold, $"{name} {metric} = {measured:P1}, below the {threshold:P0} bar");
        Assert.True(Math.Abs(measured - card) < 0.01, $"{name} {metric}: measured {measured:P1}, card says {card:P1}");
    }

    [Fact]
    public void Induction_heads_named_by_the_card_are_causal()
    {
        using var model = ModelLoader.Load(RepoPaths.Models("induction"));
        var m = model.Transformer;
        var task = new InductionTask();
        var mechanism = Mechanism("induction");
        var previousToken = CardHeads(mechanism, "previous-token");
        var induction = CardHeads(mechanism, "induction");
        Assert.NotEmpty(previousToken);
        Assert.NotEmpty(induction);
        Assert.All(previousToken, h => Assert.Equal(0, h.Layer));
        Assert.All(induction, h => Assert.Equal(1, h.Layer));
        var (prev, _) = InductionTask.Scores(m, seed: 999);

        double clean = task.Evaluate(m)[0].Value;
        double chance = 1.0 / InductionTask.Symbols;
        double prevAblated = task.Evaluate(m, HeadAnalysis.Ablate(m, previousToken))[0].Value;
        var controls = HeadAnalysis.Controls(m, previousToken.Select(h => new NamedHead(h.Layer, h.Head, "", 0)).ToList(), (l, h) => prev[l, h]);
        Assert.Equal(previousToken.Count, controls.Count);
        Assert.Empty(controls.Intersect(previousToken));
        double control = task.Evaluate(m, HeadAnalysis.Ablate(m, controls))[0].Value;
        double inductionAblated = task.Evaluate(m, HeadAnalysis.Ablate(m, induction))[0].Value;

        Assert.True(prevAblated < chance + 0.12, $"ablating the previous-token heads left induction accuracy at {prevAblated:P1} (chance {chance:P1})");
        Assert.True(control > 0.7 * clean, $"ablating as many other heads ({string.Join(", ", controls)}) dropped accuracy from {clean:P1} to {control:P1}");
        Assert.True(inductionAblated < chance + 0.1, $"ablating the induction heads left induction accuracy at {inductionAblated:P1}");
    }

    [Fact]
    public void Retrieval_heads_named_by_the_card_are_causal()
    {
        using var model = ModelLoader.Load(RepoPaths.Models("retrieval"));
        var m = model.Transformer;
        var task = new RetrievalTask();
        var named = CardHeads(Mechanism("retrieval"), "retrieval");
        Assert.NotEmpty(named);
        var retrieval = RetrievalTask.RetrievalScores(m, seed: 4242);
        var pairing = RetrievalTask.PairingScores(m, seed: 4243);
        foreach (var (layer, head) in named)
            Assert.True(retrieval[layer, head] > 0.3, $"L{layer}H{head} retrieval score {retrieval[layer, head]:F2}");

        double clean = task.Evaluate(m)[0].Value;
        double ablated = task.Evaluate(m, HeadAnalysis.Ablate(m, named))[0].Value;
        var controls = HeadAnalysis.Controls(m, named.Select(h => new NamedHead(h.Layer, h.Head, "", 0)).ToList(), (l, h) => Math.Max(retrieval[l, h], pairing[l, h]));
        Assert.Equal(named.Count, controls.Count);
        Assert.Empty(controls.Intersect(named));
        double control = task.Evaluate(m, HeadAnalysis.Ablate(m, controls))[0].Value;
        Assert.True(ablated < 0.15, $"ablating the retrieval heads left recall at {ablated:P1} (chance {1.0 / RetrievalTask.Values:P1})");
        Assert.True(control > 0.7 * clean, $"ablating as many other heads dropped recall from {clean:P1} to {control:P1}");
    }

    [Fact]
    public void Retrieval_model_answers_a_query_written_as_text()
    {
        using var model = ModelLoader.Load(RepoPaths.Models("retrieval"));
        var tok = model.RequireTokenizer();
        var ids = tok.Encode("k03 v11 k17 v02 k08 v20 k21 v05 k00 v07 k12 v19 k05 v05 k09 v13 k14 v01 k19 v22 | k08");
        var next = TextGenerator.Generate(model.Transformer, [ids], new GenerationOptions(1, new SamplingOptions()))[0];
        Assert.Equal("v20", tok.Decode(next));
    }

    [Fact]
    public void Induction_scores_point_at_the_heads_the_card_names()
    {
        using var model = ModelLoader.Load(RepoPaths.Models("induction"));
        var (prev, induction) = InductionTask.Scores(model.Transformer, seed: 12345);
        foreach (var (layer, head) in CardHeads(Mechanism("induction"), "previous-token"))
            Assert.True(prev[layer, head] > 0.3, $"L{layer}H{head} previous-token score {prev[layer, head]:F2}");
        foreach (var (layer, head) in CardHeads(Mechanism("induction"), "induction"))
            Assert.True(induction[layer, head] > 0.3, $"L{layer}H{head} induction score {induction[layer, head]:F2}");
    }

    [Fact]
    public void Induction_model_continues_a_repeated_text_through_its_tokenizer()
    {
        using var model = ModelLoader.Load(RepoPaths.Models("induction"));
        var tok = model.RequireTokenizer();
        string segment = "t05 t17 t42 t08 t33 t51 t12 t29 t03 t44";
        var prompt = tok.Encode($"t09 t10 {segment} {segment} t05 t17 t42");
        var generated = TextGenerator.Generate(model.Transformer, [prompt], new GenerationOptions(5, new SamplingOptions()))[0];
        Assert.Equal("t08 t33 t51 t12 t29", tok.Decode(generated));
    }

    [Fact]
    public void Concepts_sentiment_is_linearly_readable_and_steerable()
    {
        using var model = ModelLoader.Load(RepoPaths.Models("concepts"));
        var report = new ConceptsTask().Analyze(model.Transformer);
        double bestProbe = report.Findings.Where(f => f.Name.StartsWith("sentiment_probe_", StringComparison.Ordinal)).Max(f => f.Value);
        var steering = report.Findings.Single(f => f.Name == "steering_positive_rate");
        Assert.True(bestProbe > 0.9, $"best sentiment probe accuracy {bestProbe:P1}");
        Assert.True(steering.Value > 0.5 && steering.Chance < 0.1, $"steering turned {steering.Value:P1} of negative prompts positive (unsteered {steering.Chance:P1})");
    }
}
