using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.AnalysisWorker.Jobs;
using InterpMesh.Plugins.SAE.Formats;
using InterpMesh.Plugins.SAE.Model;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Plugins.Tests;

public sealed class SaeMeshFixture() : PluginMeshFixture(RepoPaths.Models("concepts"));

/// <summary>The SAE plugin end to end on the "concepts" toy model's residual stream.</summary>
public sealed class SaeEndToEndTests(SaeMeshFixture mesh) : IClassFixture<SaeMeshFixture>
{
    private static List<string> Sentences(int n, int seed) => ConsoleSaeSteerTests.Sentences(n, seed);

    [Fact]
    public async Task A_topk_sae_trained_on_the_residual_stream_reconstructs_it_and_recovers_the_loss()
    {
        var train = await mesh.RunAsync("sae", JsonSerializer.Serialize(new
        {
            hook = "blocks.0.hook_resid_post", texts = Sentences(200, 1), architecture = "topk", d_sae = 128, k = 8,
            steps = 300, batch_tokens = 128, save_as = "saes/concepts-l0", checkpoint_every = 150,
        }));
        Assert.True(train.State == JobState.Succeeded, train.Error);
        var ts = JsonNode.Parse(train.Result.SummaryJson)!;
        Assert.Equal(300, ts["steps"]!.GetValue<int>());
        Assert.Equal(8.0, ts["l0"]!.GetValue<double>(), 0.5);

        var eval = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { mode = "evaluate", sae = "saes/concepts-l0", texts = Sentences(48, 2) }));
        Assert.True(eval.State == JobState.Succeeded, eval.Error);
        var e = JsonNode.Parse(eval.Result.SummaryJson)!;
        double ev = e["explained_variance"]!.GetValue<double>(), recovered = e["ce_loss_recovered"]!.GetValue<double>();
        // Thresholds (docs/plugins/sae.md): a 2× over-complete TopK-8 SAE on a 64-wide stream of a 54-token grammar.
        Assert.True(ev >= 0.8, $"explained variance {ev}");
        Assert.True(recovered >= 0.8, $"CE loss recovered {recovered}");
        Assert.True(e["ce_zero_ablation"]!.GetValue<double>() > e["ce_with_sae"]!.GetValue<double>(), "zero-ablation must be worse than the SAE splice");
        Assert.InRange(e["l0"]!.GetValue<double>(), 7.5, 8.0);

        var inspect = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { mode = "inspect", sae = "saes/concepts-l0", texts = Sentences(20, 3), feature = 3, top = 3 }));
        Assert.True(inspect.State == JobState.Succeeded, inspect.Error);
        var i = JsonNode.Parse(inspect.Result.SummaryJson)!;
        Assert.InRange(i["density"]!.GetValue<double>(), 0.0, 1.0);
        Assert.Equal(3, i["promotes"]!.AsArray().Count);

        // The saved folder is a SAELens folder the format reader accepts, and the checkpoint can be resumed.
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        var (sae, info) = SaeLensFormat.Read(await store.LoadFilesAsync("saes/concepts-l0"), "saes/concepts-l0");
        using (sae)
            Assert.Equal(("blocks.0.hook_resid_post", 128, 8), (info.HookName, sae.DSae, sae.K));
        var resumed = await mesh.RunAsync("sae", JsonSerializer.Serialize(new
        {
            hook = "blocks.0.hook_resid_post", texts = Sentences(200, 1), architecture = "topk", d_sae = 128, k = 8,
            steps = 200, batch_tokens = 128, resume_from = "saes/concepts-l0-checkpoint", save_as = "saes/resumed",
        }));
        Assert.True(resumed.State == JobState.Succeeded, resumed.Error);
        var rows = JsonDocument.Parse(resumed.Result.Tables.Single().RowsJson).RootElement.EnumerateArray().ToList();
        Assert.Equal(160, rows[0][0].GetInt32());    // continues from the checkpoint's step 150
    }

    [Fact]
    public async Task Trains_on_text_the_model_generates_and_a_latent_steers_through_the_steering_plugin()
    {
        var train = await mesh.RunAsync("sae", JsonSerializer.Serialize(new
        {
            hook = "blocks.0.hook_resid_post", generate = new { prompts = new[] { "the dog is", "the cakes are" }, samples_per_prompt = 3, max_new_tokens = 12 },
            architecture = "standard", d_sae = 64, steps = 20, batch_tokens = 32, save_as = "saes/generated",
        }));
        Assert.True(train.State == JobState.Succeeded, train.Error);
        Assert.Equal(20, JsonNode.Parse(train.Result.SummaryJson)!["steps"]!.GetValue<int>());
        var export = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { mode = "export_direction", sae = "saes/generated", feature = 5, save_as = "vectors/latent-5" }));
        Assert.True(export.State == JobState.Succeeded, export.Error);
        var apply = await mesh.RunAsync("steering", JsonSerializer.Serialize(new
        {
            mode = "apply", vector = "vectors/latent-5", layer = 0, coefficients = new[] { 0.0, 4.0 }, prompts = new[] { "the cat is sad . what a" },
            max_new_tokens = 2, target = new[] { "lovely" }, control = new[] { "awful" },
        }));
        Assert.True(apply.State == JobState.Succeeded, apply.Error);
        var sweep = JsonDocument.Parse(apply.Result.Tables.Single(t => t.Name == "sweep").RowsJson).RootElement.EnumerateArray().ToList();
        Assert.Equal(2, sweep.Count);
        Assert.NotEqual(sweep[0][1].GetDouble(), sweep[1][1].GetDouble());
    }

    [Fact]
    public async Task Hook_mismatch_and_wrong_width_are_refused()
    {
        var mismatch = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { hook = "blocks.0.attn.hook_pattern", texts = new[] { "the dog is happy ." }, steps = 1 }));
        Assert.Equal("INVALID_ARGUMENT", mismatch.ErrorCode);
        Assert.Contains("train SAEs on [batch, pos, d] hooks", mismatch.Error, StringComparison.Ordinal);

        // A published-style folder for a model 8 wide, uploaded and applied to this 64-wide model.
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        using (TorchSharp.torch.NewDisposeScope())
        {
            using var small = SparseAutoencoder.Create("standard", 8, 12, 0, 1);
            await store.SaveFilesAsync("saes/other-model", SaeLensFormat.Write(small, new SaeInfo("blocks.0.hook_resid_post", "other", "standard", 8, 12, 0, "none", null)));
        }
        var wrong = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { mode = "evaluate", sae = "saes/other-model", texts = new[] { "the dog is happy ." } }));
        Assert.Equal("INVALID_ARGUMENT", wrong.ErrorCode);
        Assert.Contains("the SAE has d_in = 8 but 'blocks.0.hook_resid_post' of this model is 64 wide", wrong.Error, StringComparison.Ordinal);
        var other = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { mode = "evaluate", sae = "saes/other-model", hook = "blocks.1.hook_resid_post", texts = new[] { "the dog is happy ." } }));
        Assert.Contains("was trained at 'blocks.0.hook_resid_post', not 'blocks.1.hook_resid_post'", other.Error, StringComparison.Ordinal);
    }
}
