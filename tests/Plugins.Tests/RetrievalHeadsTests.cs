using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.ToyModels.Export;

namespace InterpMesh.Plugins.Tests;

public sealed class InductionMeshFixture() : PluginMeshFixture(RepoPaths.Models("induction"));

public sealed class RetrievalMeshFixture() : PluginMeshFixture(RepoPaths.Models("retrieval"));

/// <summary>A Llama-shaped model with random weights (no tokenizer): nothing in it should look like retrieval.</summary>
public sealed class RandomMeshFixture() : PluginMeshFixture("")
{
    protected override Task<string> ModelPathAsync()
    {
        string dir = Path.Combine(Path.GetTempPath(), "interpmesh-random-" + Guid.NewGuid().ToString("N"));
        using var worker = new TorchWorker();
        worker.Run(() =>
        {
            using var model = Presets.CreateRandom(Presets.Config("llama-tiny"), seed: 5);
            HfCheckpointWriter.Save(model, dir);
            return 0;
        });
        return Task.FromResult(dir);
    }
}

/// <summary>Heads named by the toy models' cards (found when they were trained, by a separate analysis).</summary>
internal static class Card
{
    public static HashSet<string> Heads(string model, string role) =>
        [.. JsonNode.Parse(File.ReadAllText(RepoPaths.Models($"{model}/mechanism.json")))!["heads"]!.AsArray()
            .Where(h => h!["role"]!.GetValue<string>().StartsWith(role, StringComparison.Ordinal)).Select(h => h!["label"]!.GetValue<string>())];
}

public sealed class InductionHeadTests(InductionMeshFixture mesh) : IClassFixture<InductionMeshFixture>
{
    [Fact]
    public async Task The_card_s_induction_and_previous_token_heads_rank_first()
    {
        var tokens = Enumerable.Range(0, 60).Select(i => $"t{i:00}").ToArray();
        var job = await mesh.RunAsync("retrieval-heads", JsonSerializer.Serialize(new { analyses = new[] { "detector" }, detector = new { tokens, prompts = 16, length = 20 } }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var rows = JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "per_head").RowsJson).RootElement.EnumerateArray().ToList();
        List<string> Top(int column, int n) => [.. rows.OrderByDescending(r => r[column].GetDouble()).Take(n).Select(r => r[2].GetString()!)];
        var induction = Card.Heads("induction", "induction");
        var previous = Card.Heads("induction", "previous-token");
        Assert.Equal(induction.Order(), Top(6, induction.Count).Order());
        Assert.Equal(previous.Order(), Top(4, previous.Count).Order());
        Assert.Contains(job.Result.Figures, f => f.Name == "induction_heatmap");
    }
}

public sealed class RetrievalHeadTests(RetrievalMeshFixture mesh) : IClassFixture<RetrievalMeshFixture>
{
    private static object Synthetic(object? depths = null, int[]? pairs = null) => new
    {
        keys = Enumerable.Range(0, 24).Select(i => $"k{i:00}"),
        values = Enumerable.Range(0, 24).Select(i => $"v{i:00}"),
        separator = new[] { "|" },
        pairs = pairs ?? [10],
    };

    [Fact]
    public async Task The_card_s_retrieval_heads_score_highest_and_ablating_them_breaks_recall()
    {
        var job = await mesh.RunAsync("retrieval-heads", JsonSerializer.Serialize(new
        {
            analyses = new[] { "retrieval", "ablation" },
            synthetic = Synthetic(),
            depths = new[] { 0, 25, 50, 75, 100 },
            trials_per_cell = 3,
            seed = 1,
        }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.Equal(15, summary["trials"]!.GetValue<int>());
        Assert.True(summary["recall_accuracy"]!.GetValue<double>() >= 0.9, $"the toy recalls the needle: {summary["recall_accuracy"]}");
        var card = Card.Heads("retrieval", "retrieval");
        var ranked = JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "ranked").RowsJson).RootElement.EnumerateArray().ToList();
        var top = ranked.Take(card.Count).Select(r => r[1].GetString()!).ToHashSet();
        Assert.True(card.SetEquals(top), $"top heads {string.Join(", ", ranked.Take(6).Select(r => $"{r[1]}={r[4]}"))}; the card names {string.Join(", ", card)}");
        var found = summary["retrieval_heads"]!.AsArray().Select(h => h!.GetValue<string>()).ToHashSet();
        Assert.Superset(card, found);
        var ablation = summary["ablation"]!;
        double dropTop = ablation["drop_top"]!.GetValue<double>(), dropRandom = ablation["drop_random"]!.GetValue<double>();
        Assert.True(dropTop >= dropRandom + 0.5, $"masking the top heads drops recall by {dropTop}, random heads by {dropRandom}");
        Assert.Single(job.Result.Artifacts);
        Assert.Contains(job.Result.Figures, f => f.Name == "retrieval_heatmap");
    }

    [Theory]
    [InlineData("""{"analyses": ["retrieval"], "depths": [150]}""", "depth 150 is outside 0–100")]
    [InlineData("""{"analyses": ["retrieval"], "synthetic": {"keys": ["k00","k01","k02","k03","k04","k05","k06","k07","k08","k09","k10","k11","k12","k13","k14","k15","k16","k17","k18","k19","k20","k21","k22","k23"], "values": ["v00","v01"], "pairs": [23]}}""", "longer than the model's context of 48")]
    [InlineData("""{"analyses": ["retrieval"], "text": {"needle": "k01 v02", "question": "k01", "haystack": "k03 v04 k05 v06", "lengths": [60]}}""", "longer than the model's context of 48")]
    [InlineData("""{"analyses": ["detector"], "detector": {"length": 40}}""", "repeated twice is longer than the model's context")]
    public async Task Bad_input_fails_the_job_as_invalid_argument(string parameters, string message)
    {
        var job = await mesh.RunAsync("retrieval-heads", parameters);
        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("INVALID_ARGUMENT", job.ErrorCode);
        Assert.Contains(message, job.Error, StringComparison.Ordinal);
    }
}

public sealed class RandomModelRetrievalTests(RandomMeshFixture mesh) : IClassFixture<RandomMeshFixture>
{
    [Fact]
    public async Task No_head_of_a_random_model_passes_the_retrieval_threshold()
    {
        var job = await mesh.RunAsync("retrieval-heads", JsonSerializer.Serialize(new { analyses = new[] { "retrieval" }, synthetic = new { pairs = new[] { 6 } }, trials_per_cell = 2 }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.Empty(summary["retrieval_heads"]!.AsArray());
        var rows = JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "per_head").RowsJson).RootElement.EnumerateArray().ToList();
        // Grouped-query attention (8 query heads sharing 2 key/value heads): scored per query head.
        Assert.Equal(2 * 8, rows.Count);
        Assert.All(rows, r => Assert.True(r[3].GetDouble() <= 0.1));
    }
}
