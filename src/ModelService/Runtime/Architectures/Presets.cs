using InterpMesh.Runtime.Execution;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Architectures;

/// <summary>Well-known model shapes with random weights, for benchmarks and tests that need scale.</summary>
public static class Presets
{
    public static IReadOnlyList<string> Names { get; } = ["gpt2-small", "gpt2-tiny", "llama-tiny"];

    public static ModelConfig Config(string name) => name switch
    {
        "gpt2-small" => Gpt2(12, 768, 12, 50257, 1024),
        "gpt2-tiny" => Gpt2(2, 64, 4, 512, 128),
        "llama-tiny" => new ModelConfig
        {
            Architecture = "LlamaForCausalLM", NLayers = 2, DModel = 64, NHeads = 8, NKvHeads = 2, DHead = 8, DMlp = 160,
            VocabSize = 512, ContextLength = 256, Norm = NormKind.RmsNorm, NormEps = 1e-6, Positional = PositionalKind.Rotary,
            RotaryDim = 8, RopeTheta = 10000, Mlp = MlpKind.SwiGlu, TiedEmbeddings = false,
        },
        _ => throw new ArgumentException($"unknown preset '{name}'; known presets: {string.Join(", ", Names)}"),
    };

    private static ModelConfig Gpt2(int layers, int d, int heads, int vocab, int ctx) => new()
    {
        Architecture = "GPT2LMHeadModel", NLayers = layers, DModel = d, NHeads = heads, NKvHeads = heads, DHead = d / heads,
        DMlp = 4 * d, VocabSize = vocab, ContextLength = ctx, Norm = NormKind.LayerNorm, NormEps = 1e-5,
        Positional = PositionalKind.Learned, Mlp = MlpKind.GeluTanh, TiedEmbeddings = true,
    };

    /// <summary>A model of the given shape with N(0, 0.02²) weights (norm gains 1, biases small).</summary>
    public static Transformer CreateRandom(ModelConfig c, long seed, ScalarType dtype = ScalarType.Float32)
    {
        // Ordinary tensors even on a torch thread in inference mode, so gradient requests can use them (see ModelLoader.Load).
        using var normal = inference_mode(false);
        using var noGrad = no_grad();
        using var gen = new Generator((ulong)seed);
        Tensor N(params long[] shape) => Scalars.MulValue(randn(shape, dtype: ScalarType.Float32, generator: gen), 0.02f).to(dtype).DetachFromDisposeScope();
        Tensor One(long n) => Scalars.AddValue(Scalars.MulValue(randn(n, generator: gen), 0.05f), 1).to(dtype).DetachFromDisposeScope();
        bool ln = c.Norm == NormKind.LayerNorm;
        long qkv = (long)(c.NHeads + 2 * c.NKvHeads) * c.DHead;
        long mlpIn = c.Mlp == MlpKind.SwiGlu ? 2L * c.DMlp : c.DMlp;
        var blocks = Enumerable.Range(0, c.NLayers).Select(_ => new BlockWeights
        {
            Ln1Weight = One(c.DModel),
            Ln1Bias = ln ? N(c.DModel) : null,
            Qkv = N(qkv, c.DModel),
            QkvBias = ln ? N(qkv) : null,
            Out = N(c.DModel, (long)c.NHeads * c.DHead),
            OutBias = ln ? N(c.DModel) : null,
            Ln2Weight = One(c.DModel),
            Ln2Bias = ln ? N(c.DModel) : null,
            MlpIn = N(mlpIn, c.DModel),
            MlpInBias = ln ? N(mlpIn) : null,
            MlpOut = N(c.DModel, c.DMlp),
            MlpOutBias = ln ? N(c.DModel) : null,
        }).ToList();
        var embed = N(c.VocabSize, c.DModel);
        var weights = new TransformerWeights
        {
            Embed = embed,
            PosEmbed = c.Positional == PositionalKind.Learned ? N(c.ContextLength, c.DModel) : null,
            Blocks = blocks,
            LnFinalWeight = One(c.DModel),
            LnFinalBias = ln ? N(c.DModel) : null,
            Unembed = c.TiedEmbeddings ? embed : N(c.VocabSize, c.DModel),
        };
        // Drawn in checkpoint layout, so a preset's numbers do not depend on the compute layout.
        return new Transformer(c, TransformerWeights.FromCheckpointLayout(weights), $"preset:{c.Architecture}");
    }
}
