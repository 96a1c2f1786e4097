using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Plugins.SAE;
using InterpMesh.Plugins.Testing;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// A job taken again after its worker died, stopped or was recycled (the same job id runs again) goes
/// on from the checkpoint its earlier take saved, and only from one that is its own and whole.
/// </summary>
public sealed class SaeResumeTests
{
    private static string Parameters(int steps) => JsonSerializer.Serialize(new
    {
        hook = "blocks.0.hook_resid_post", texts = new[] { "the dog is happy . what a lovely walk .", "the cakes are bad . what a grim meal ." },
        architecture = "topk", d_sae = 32, k = 4, steps, batch_tokens = 16, checkpoint_every = 10, save_as = "saes/retried",
    });

    private static async Task<JsonNode> TrainAsync(TestModel model, InMemoryArtifactStore store, string job, int steps)
    {
        using var context = new TestAnalysisContext(model.Client, store) { JobId = job };
        var result = await PluginHarness.RunAsync(new SaePlugin(), Parameters(steps), context);
        return result.Summary!;
    }

    [Fact]
    public async Task A_second_take_goes_on_from_its_own_checkpoint_and_not_from_another_jobs()
    {
        using var model = TestModel.Load(RepoPaths.Models("concepts"));
        var store = new InMemoryArtifactStore();
        // The first take of job-1 checkpoints at steps 10, 20, 30 and finishes at 40.
        var first = await TrainAsync(model, store, "job-1", steps: 40);
        Assert.Null(first["resumed_from_step"]);
        Assert.Equal(40 * 16, first["tokens"]!.GetValue<long>());

        // Taken again, it starts at the last checkpoint's step 30, not at 0.
        var second = await TrainAsync(model, store, "job-1", steps: 40);
        Assert.Equal(30, second["resumed_from_step"]!.GetValue<int>());
        Assert.Equal(40, second["steps"]!.GetValue<int>());
        Assert.Equal(10 * 16, second["tokens"]!.GetValue<long>());

        // Another job that saves under the same name does not take job-1's checkpoint.
        var other = await TrainAsync(model, store, "job-2", steps: 20);
        Assert.Null(other["resumed_from_step"]);
        Assert.Equal(20 * 16, other["tokens"]!.GetValue<long>());
    }

    [Fact]
    public async Task A_checkpoint_whose_two_halves_are_from_different_steps_is_not_used()
    {
        using var model = TestModel.Load(RepoPaths.Models("concepts"));
        var store = new InMemoryArtifactStore();
        await TrainAsync(model, store, "job-3", steps: 40);
        // A take that died between writing the SAE (step 30) and its trainer state leaves the older state.
        var state = await store.FindAsync("saes/retried-checkpoint/trainer");
        var tensors = await store.LoadTensorsAsync("saes/retried-checkpoint/trainer");
        var metadata = state!.Metadata.DeepClone().AsObject();
        metadata["steps"] = 20;
        await store.SaveTensorsAsync("saes/retried-checkpoint/trainer", tensors, metadata);
        foreach (var t in tensors.Values)
            t.Dispose();
        using var context = new TestAnalysisContext(model.Client, store) { JobId = "job-3" };
        var result = await PluginHarness.RunAsync(new SaePlugin(), Parameters(40), context);
        Assert.Null(result.Summary!["resumed_from_step"]);
        Assert.Contains(context.Progress, p => p.Message.Contains("checkpoint is incomplete", StringComparison.Ordinal));
    }
}
