using System.Text;
using InterpMesh.Plugins.SAE.Formats;
using InterpMesh.Plugins.SAE.Model;
using InterpMesh.Plugins.SAE.Training;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Tests;

/// <summary>The SAE plugin's model, trainer and SAELens format, without servers.</summary>
public sealed class SaeTests
{
    /// <summary>
    /// Toy models of superposition: 48 known unit directions in 24 dimensions; each sample is a
    /// random combination of 3 of them with magnitudes in [0.5, 1.5].
    /// </summary>
    private static (Tensor Directions, Func<int, Tensor> Sample) Superposition(int features, int d, int active, long seed)
    {
        var g = new Generator((ulong)seed);
        var directions = randn([features, d], generator: g);
        directions /= directions.norm(1, keepdim: true);
        directions = directions.DetachFromDisposeScope();
        Tensor Sample(int n)
        {
            var coefficients = zeros(n, features);
            var idx = rand([n, features], generator: g).argsort(1)[.., ..active];
            coefficients.scatter_(1, idx, rand([n, active], generator: g) + 0.5f);
            return coefficients.matmul(directions);
        }
        return (directions, Sample);
    }

    [Fact]
    public void A_topk_sae_recovers_the_true_directions_of_sparse_superposed_features()
    {
        using var mode = inference_mode(false);
        using var scope = NewDisposeScope();
        var (truth, sample) = Superposition(48, 24, 3, seed: 1);
        using var sae = SparseAutoencoder.Create("topk", 24, 48, k: 3, seed: 2);
        var trainer = new SaeTrainer(sae, new TrainingOptions(LearningRate: 3e-3, WarmupSteps: 50, TotalSteps: 3000, AuxK: 16, DeadAfterSteps: 100));
        trainer.InitializeDecoderBias(sample(4096));
        StepMetrics last = null!;
        for (int step = 0; step < 3000; step++)
        {
            using var s = NewDisposeScope();
            last = trainer.Train(sample(256));
        }
        // For every true feature, the best-matching decoder row.
        var cos = truth.matmul(sae.WDec.t());
        double meanMax = cos.max(1).values.mean().item<float>();
        Assert.True(meanMax >= 0.9, $"mean max cosine {meanMax:0.###} (L0 {last.L0:0.##}, EV {last.ExplainedVariance:0.###}, dead {last.DeadFraction:0.###})");
        Assert.Equal(3, last.L0, 1);
        Assert.True(last.ExplainedVariance > 0.9, $"explained variance {last.ExplainedVariance}");
    }

    [Fact]
    public void Saving_in_the_saelens_layout_and_loading_gives_identical_encodings()
    {
        using var scope = NewDisposeScope();
        using var sae = SparseAutoencoder.Create("topk", 16, 40, k: 4, seed: 3);
        using (no_grad())
            sae.BEnc.copy_(randn(40) * 0.1f);
        var files = SaeLensFormat.Write(sae, new SaeInfo("blocks.0.hook_resid_post", "concepts", "topk", 16, 40, 4, "none", null));
        var (loaded, info) = SaeLensFormat.Read(files, "test");
        using (loaded)
        {
            Assert.Equal("blocks.0.hook_resid_post", info.HookName);
            var x = randn(32, 16);
            Assert.True(sae.Encode(x).eq(loaded.Encode(x)).all().item<bool>());
            Assert.True(sae.Decode(sae.Encode(x)).eq(loaded.Decode(loaded.Encode(x))).all().item<bool>());
        }
    }

    [Fact]
    public void A_hand_made_pre_6_0_folder_with_hook_point_loads()
    {
        using var scope = NewDisposeScope();
        using var reference = SparseAutoencoder.Create("standard", 8, 12, k: 0, seed: 4);
        var written = SaeLensFormat.Write(reference, new SaeInfo("x", null, "standard", 8, 12, 0, "none", null));
        // The flat config older SAELens versions wrote (and many published SAEs still carry).
        var cfg = """
            {"model_name": "gpt2-small", "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8, "d_in": 8, "d_sae": 12,
             "dtype": "float32", "device": "cpu", "context_size": 128, "prepend_bos": true, "activation_fn_str": "relu",
             "apply_b_dec_to_input": true, "normalize_activations": "none"}
            """;
        var (sae, info) = SaeLensFormat.Read(new Dictionary<string, byte[]> { ["cfg.json"] = Encoding.UTF8.GetBytes(cfg), ["sae_weights.safetensors"] = written["sae_weights.safetensors"] }, "published");
        using (sae)
        {
            Assert.Equal("blocks.8.hook_resid_pre", info.HookName);
            Assert.Equal("gpt2-small", info.ModelName);
            Assert.Equal("standard", sae.Architecture);
            var x = randn(4, 8);
            Assert.True(reference.Encode(x).eq(sae.Encode(x)).all().item<bool>());
        }
        var topk = """{"hook_point": "blocks.0.hook_resid_post", "d_in": 8, "d_sae": 12, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2}}""";
        var (sparse, _) = SaeLensFormat.Read(new Dictionary<string, byte[]> { ["cfg.json"] = Encoding.UTF8.GetBytes(topk), ["sae_weights.safetensors"] = written["sae_weights.safetensors"] }, "published-topk");
        using (sparse)
            Assert.Equal(("topk", 2), (sparse.Architecture, sparse.K));
    }

    [Theory]
    [InlineData("""{"hook_point": "h", "d_in": 9, "d_sae": 12}""", "W_enc is [8, 12], expected [9, 12]")]
    [InlineData("""{"d_in": 8, "d_sae": 12}""", "names no hook")]
    [InlineData("""not json""", "is not a JSON object")]
    [InlineData("""{"hook_point": "h", "d_in": 8, "d_sae": 12, "architecture": "gated"}""", "holds b_enc, which a 'gated' SAE does not have")]
    [InlineData("""{"hook_point": "h", "d_in": 8, "d_sae": 12, "architecture": "crosscoder"}""", "architecture 'crosscoder' is not supported")]
    public void Bad_folders_are_refused_with_what_is_wrong(string cfg, string message)
    {
        using var scope = NewDisposeScope();
        using var reference = SparseAutoencoder.Create("standard", 8, 12, k: 0, seed: 4);
        var weights = SaeLensFormat.Write(reference, new SaeInfo("x", null, "standard", 8, 12, 0, "none", null))["sae_weights.safetensors"];
        var e = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(new Dictionary<string, byte[]> { ["cfg.json"] = Encoding.UTF8.GetBytes(cfg), ["sae_weights.safetensors"] = weights }, "f"));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Corrupted_weights_are_refused()
    {
        var cfg = Encoding.UTF8.GetBytes("""{"hook_point": "h", "d_in": 8, "d_sae": 12}""");
        var e = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(new Dictionary<string, byte[]> { ["cfg.json"] = cfg, ["sae_weights.safetensors"] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }, "f"));
        Assert.Contains("is not a valid safetensors file", e.Message, StringComparison.Ordinal);
    }
}
