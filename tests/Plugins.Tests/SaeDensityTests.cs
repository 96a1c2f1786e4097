using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Plugins.SAE;
using InterpMesh.Plugins.SAE.Formats;
using InterpMesh.Plugins.SAE.Model;
using InterpMesh.Plugins.Testing;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// The sae plugin's <c>inspect</c> without a feature ranks every latent that fired by density (its
/// <c>density</c> table, which the web console's SAE browser lists): each value is the density that
/// <c>inspect</c> with that feature measures, densest first, and latents that never fired are left out.
/// </summary>
public sealed class SaeDensityTests
{
    private static readonly string[] Texts = ["the dog is happy . what a lovely walk .", "the cakes are bad . what a grim meal .", "the teams are kind . what a great match ."];

    [Fact]
    public async Task Inspect_without_a_feature_ranks_every_latent_by_the_density_inspect_with_it_measures()
    {
        using var model = TestModel.Load(RepoPaths.Models("concepts"), name: "concepts");
        var store = new InMemoryArtifactStore();
        using (TorchSharp.torch.NewDisposeScope())
        {
            // A fresh (untrained) standard SAE: W_enc = W_dec^T with random rows, so its latents fire on some tokens and not others.
            using var sae = SparseAutoencoder.Create("standard", 64, 24, 0, 5);
            // The last four latents can never fire.
            using (TorchSharp.torch.no_grad())
                sae.BEnc.narrow(0, 20, 4).fill_(-1e4);
            await store.SaveFilesAsync("saes/fresh", SaeLensFormat.Write(sae, new SaeInfo("blocks.0.hook_resid_post", "concepts", "standard", 64, 24, 0, "none", null)));
        }
        async Task<PluginResult> Inspect(int? feature)
        {
            using var context = new TestAnalysisContext(model.Client, store);
            var parameters = feature is int f ? JsonSerializer.Serialize(new { mode = "inspect", sae = "saes/fresh", texts = Texts, feature = f })
                : JsonSerializer.Serialize(new { mode = "inspect", sae = "saes/fresh", texts = Texts });
            return await PluginHarness.RunAsync(new SaePlugin(), parameters, context);
        }

        var all = await Inspect(null);
        var table = all.Tables.Single(t => t.Name == "density");
        Assert.Equal(["feature", "density", "tokens"], table.Columns);
        var rows = table.Rows.Select(r => (Feature: r[0]!.GetValue<int>(), Density: r[1]!.GetValue<double>(), Tokens: r[2]!.GetValue<long>())).ToList();
        int tokens = all.Tables.Single(t => t.Name == "features").Rows.Count;
        Assert.NotEmpty(rows);
        Assert.True(rows.Count > 1, "a ranking of one latent checks no order");
        Assert.DoesNotContain(rows, r => r.Feature >= 20);
        Assert.Equal(rows.OrderByDescending(r => r.Density).ThenBy(r => r.Feature), rows);
        foreach (var (feature, density, count) in rows)
        {
            Assert.Equal(count / (double)tokens, density, 12);
            Assert.Equal(density, (await Inspect(feature)).Summary!["density"]!.GetValue<double>(), 12);
        }
        Assert.Equal(0.0, (await Inspect(21)).Summary!["density"]!.GetValue<double>());
    }
}
