using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Loading;

/// <summary>
/// Configurations the golden fixtures do not cover (every rope_scaling type, attention/MLP biases,
/// Qwen2's optional sliding window), against the naive float64 reference forward with frequencies
/// computed here from the formulas of transformers' rope initialisers.
/// </summary>
public sealed class RopeAndBiasTests : TorchTest
{
    private static readonly HfCheckpointWriter.Shape Shape = new();
    private static readonly int HeadDim = Shape.Hidden / Shape.Heads;
    private static readonly int[] Prompt = Enumerable.Range(0, 24).Select(i => (i * 37 + 5) % 96).ToArray();

    private static double[] Default(double theta) => Enumerable.Range(0, HeadDim / 2).Select(i => Math.Pow(theta, -2.0 * i / HeadDim)).ToArray();

    private static Tensor Runtime(string folder)
    {
        using var model = ModelLoader.Load(folder);
        return model.Transformer.Forward(Ids(Prompt), null, HookPlan.Empty, null, LogitsMode.All)![0];
    }

    private static void Check(string arch, Dictionary<string, object> extraConfig, Dictionary<string, Tensor>? extraWeights, double[]? inv, double ropeScale = 1.0, int? window = null)
    {
        using var dir = new TempFolder();
        var weights = HfCheckpointWriter.LlamaFamily(arch, Shape, tied: false, seed: 3);
        foreach (var (k, v) in extraWeights ?? [])
            weights[k] = v;
        var config = HfCheckpointWriter.LlamaConfig(arch, Shape, tied: false);
        foreach (var (k, v) in extraConfig)
            config[k] = v;
        HfCheckpointWriter.Save(dir.Path, config, weights);
        var reference = ReferenceForward.Llama(weights, Shape.Layers, Shape.Heads, Shape.KvHeads, HeadDim, 1e-6, 10000, false, Prompt, inv, ropeScale, window);
        double diff = MaxAbsDiff(Runtime(dir.Path), reference);
        Assert.True(diff <= 1e-4, $"{arch} {string.Join(", ", extraConfig.Keys)}: max |Δlogit| {diff:E2}");
    }

    [Fact]
    public void Linear_scaling_divides_every_frequency() =>
        Check("LlamaForCausalLM", new() { ["rope_scaling"] = new Dictionary<string, object> { ["rope_type"] = "linear", ["factor"] = 3.0 } },
            null, Default(10000).Select(f => f / 3).ToArray());

    [Fact]
    public void Dynamic_scaling_within_the_context_is_plain_rope() =>
        Check("LlamaForCausalLM", new() { ["rope_scaling"] = new Dictionary<string, object> { ["type"] = "dynamic", ["factor"] = 4.0 } }, null, Default(10000));

    [Fact]
    public void Llama3_scaling_smooths_the_middle_band()
    {
        // factor 8, low 1, high 2, original 16 tokens: wavelengths > 16 are divided by 8, < 8 kept, between smoothed.
        var inv = Default(10000).Select(f =>
        {
            double wavelen = 2 * Math.PI / f;
            if (wavelen < 16.0 / 2) return f;
            if (wavelen > 16.0 / 1) return f / 8;
            double s = (16 / wavelen - 1) / (2 - 1);
            return (1 - s) * f / 8 + s * f;
        }).ToArray();
        Check("LlamaForCausalLM", new() { ["rope_scaling"] = new Dictionary<string, object> { ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 2.0, ["original_max_position_embeddings"] = 16 } }, null, inv);
    }

    [Fact]
    public void Yarn_blends_interpolation_and_extrapolation_and_scales_cos_sin()
    {
        // dim 8, θ 10000, original context 64 (max_position_embeddings): correction range [0, 2].
        double factor = 4;
        double Dim(double rotations) => HeadDim * Math.Log(64 / (rotations * 2 * Math.PI)) / (2 * Math.Log(10000));
        double low = Math.Max(Math.Floor(Dim(32)), 0), high = Math.Min(Math.Ceiling(Dim(1)), HeadDim - 1);
        Assert.Equal((0.0, 2.0), (low, high));
        var inv = Default(10000).Select((f, i) =>
        {
            double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
            return f / factor * ramp + f * (1 - ramp);
        }).ToArray();
        Check("LlamaForCausalLM", new() { ["rope_scaling"] = new Dictionary<string, object> { ["rope_type"] = "yarn", ["factor"] = factor } }, null, inv, 0.1 * Math.Log(factor) + 1);
    }

    [Theory]
    [InlineData(16)] // the 24-token prompt reaches past the original context: long factors
    [InlineData(32)] // it does not: short factors
    public void Longrope_picks_short_or_long_factors_by_the_longest_position(int original)
    {
        double[] shortF = [1, 1.5, 2, 3], longF = [1, 2, 5, 9];
        var chosen = Prompt.Length > original ? longF : shortF;
        var inv = Default(10000).Select((f, i) => f / chosen[i]).ToArray();
        double factor = (double)Shape.Context / original;
        double scale = Math.Sqrt(1 + Math.Log(factor) / Math.Log(original));
        Check("LlamaForCausalLM", new()
        {
            ["original_max_position_embeddings"] = original,
            ["rope_scaling"] = new Dictionary<string, object> { ["rope_type"] = "longrope", ["short_factor"] = shortF, ["long_factor"] = longF },
        }, null, inv, scale);
    }

    [Fact]
    public void Attention_and_mlp_biases_are_added()
    {
        using var g = new Generator(9);
        Tensor R(long n) => randn([n], generator: g) * 0.3f;
        var biases = new Dictionary<string, Tensor>();
        for (int l = 0; l < Shape.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            biases[p + "self_attn.q_proj.bias"] = R(Shape.Heads * HeadDim);
            biases[p + "self_attn.k_proj.bias"] = R(Shape.KvHeads * HeadDim);
            biases[p + "self_attn.v_proj.bias"] = R(Shape.KvHeads * HeadDim);
            biases[p + "self_attn.o_proj.bias"] = R(Shape.Hidden);
            biases[p + "mlp.gate_proj.bias"] = R(Shape.Intermediate);
            biases[p + "mlp.up_proj.bias"] = R(Shape.Intermediate);
            biases[p + "mlp.down_proj.bias"] = R(Shape.Hidden);
        }
        Check("LlamaForCausalLM", new() { ["attention_bias"] = true, ["mlp_bias"] = true }, biases, null);
    }

    [Fact]
    public void Qwen2_sliding_window_applies_when_enabled() =>
        Check("Qwen2ForCausalLM", new() { ["use_sliding_window"] = true, ["sliding_window"] = 5, ["max_window_layers"] = 0 }, null, null, window: 5);

    [Fact]
    public void Mistral_sliding_window_counts_the_query_itself() =>
        Check("MistralForCausalLM", new() { ["sliding_window"] = 7 }, null, null, window: 7);
}
