using static TorchSharp.torch;

namespace InterpMesh.Runtime.Architectures;

/// <summary>
/// The weights of one block in the runtime's canonical layout. Linear weights are <c>[out, in]</c>
/// (GPT-2's Conv1D weights are transposed at load). q, k and v are fused into one matrix of
/// <c>[(n_heads + 2·n_kv_heads)·d_head, d_model]</c> rows (q rows, then k, then v), and a SwiGLU
/// MLP's gate and up projections into one <c>[2·d_mlp, d_model]</c> (gate rows first), so each is
/// one matrix multiply. Rotary q/k rows are in the order the config's rotary style expects
/// (rotate_half unless <see cref="ModelConfig.RotaryInterleaved"/>). Norm gains are stored as
/// applied (Gemma's (1 + w) already added).
/// </summary>
public sealed class BlockWeights : IDisposable
{
    /// <summary>Pre-attention norm; null when the model has none (OLMo-2).</summary>
    public required Tensor? Ln1Weight { get; init; }
    public Tensor? Ln1Bias { get; init; }
    public required Tensor Qkv { get; init; }
    public Tensor? QkvBias { get; init; }
    public required Tensor Out { get; init; }
    public Tensor? OutBias { get; init; }
    /// <summary>Pre-MLP norm; null when the model has none (OLMo-2) or shares ln1 (GPT-J).</summary>
    public required Tensor? Ln2Weight { get; init; }
    public Tensor? Ln2Bias { get; init; }
    /// <summary>Norm on the attention output before the residual add (Gemma 2/3, OLMo-2).</summary>
    public Tensor? Ln1PostWeight { get; init; }
    /// <summary>Norm on the MLP output before the residual add (Gemma 2/3, OLMo-2).</summary>
    public Tensor? Ln2PostWeight { get; init; }
    /// <summary>q/k norm gains: <c>[d_head]</c> per head, or the whole projection's width.</summary>
    public Tensor? QNormWeight { get; init; }
    public Tensor? KNormWeight { get; init; }
    public required Tensor MlpIn { get; init; }
    public Tensor? MlpInBias { get; init; }
    public required Tensor MlpOut { get; init; }
    public Tensor? MlpOutBias { get; init; }

    public IEnumerable<Tensor> All() =>
        new[] { Ln1Weight, Ln1Bias, Qkv, QkvBias, Out, OutBias, Ln2Weight, Ln2Bias, MlpIn, MlpInBias, MlpOut, MlpOutBias, Ln1PostWeight, Ln2PostWeight, QNormWeight, KNormWeight }
            .Where(t => t is not null)!;

    public void Dispose()
    {
        foreach (var t in All())
            t.Dispose();
    }
}

/// <summary>All weights of a model in the canonical layout (see <see cref="BlockWeights"/>).</summary>
public sealed class TransformerWeights : IDisposable
{
    /// <summary><c>[vocab, d_model]</c>.</summary>
    public required Tensor Embed { get; init; }
    /// <summary><c>[context, d_model]</c>, learned positions only.</summary>
    public Tensor? PosEmbed { get; init; }
    public required IReadOnlyList<BlockWeights> Blocks { get; init; }
    public required Tensor LnFinalWeight { get; init; }
    public Tensor? LnFinalBias { get; init; }
    /// <summary><c>[vocab, d_model]</c>; the same tensor as <see cref="Embed"/> when tied.</summary>
    public required Tensor Unembed { get; init; }
    /// <summary><c>[vocab]</c>, GPT-J's lm_head bias.</summary>
    public Tensor? UnembedBias { get; init; }

    /// <summary>Every distinct tensor (a tied unembedding is listed once).</summary>
    public IEnumerable<Tensor> AllTensors()
    {
        yield return Embed;
        if (PosEmbed is not null)
            yield return PosEmbed;
        foreach (var t in Blocks.SelectMany(b => b.All()))
            yield return t;
        yield return LnFinalWeight;
        if (LnFinalBias is not null)
            yield return LnFinalBias;
        if (!ReferenceEquals(Unembed, Embed))
            yield return Unembed;
        if (UnembedBias is not null)
            yield return UnembedBias;
    }

    /// <summary>A copy on another device (this object keeps its own tensors).</summary>
    public TransformerWeights To(Device device)
    {
        Tensor? Move(Tensor? t) => t?.to(device);
        var embed = Embed.to(device);
        return new TransformerWeights
        {
            Embed = embed,
            PosEmbed = Move(PosEmbed),
            Blocks = Blocks.Select(b => new BlockWeights
            {
                Ln1Weight = Move(b.Ln1Weight), Ln1Bias = Move(b.Ln1Bias), Qkv = b.Qkv.to(device), QkvBias = Move(b.QkvBias),
                Out = b.Out.to(device), OutBias = Move(b.OutBias), Ln2Weight = Move(b.Ln2Weight), Ln2Bias = Move(b.Ln2Bias),
                MlpIn = b.MlpIn.to(device), MlpInBias = Move(b.MlpInBias), MlpOut = b.MlpOut.to(device), MlpOutBias = Move(b.MlpOutBias),
                Ln1PostWeight = Move(b.Ln1PostWeight), Ln2PostWeight = Move(b.Ln2PostWeight), QNormWeight = Move(b.QNormWeight), KNormWeight = Move(b.KNormWeight),
            }).ToList(),
            LnFinalWeight = LnFinalWeight.to(device),
            LnFinalBias = Move(LnFinalBias),
            Unembed = ReferenceEquals(Unembed, Embed) ? embed : Unembed.to(device),
            UnembedBias = Move(UnembedBias),
        };
    }

    public long ParameterCount =>
        Embed.numel() + (PosEmbed?.numel() ?? 0) + Blocks.Sum(b => b.All().Sum(t => t.numel()))
        + LnFinalWeight.numel() + (LnFinalBias?.numel() ?? 0) + (ReferenceEquals(Unembed, Embed) ? 0 : Unembed.numel()) + (UnembedBias?.numel() ?? 0);

    /// <summary>Checks every tensor's shape against the config; the message names the tensor.</summary>
    public void Validate(ModelConfig c, string source)
    {
        void Expect(Tensor? t, string what, params long[] shape)
        {
            if (t is null)
                throw new ModelFormatException(source, $"missing tensor {what}");
            if (!t.shape.SequenceEqual(shape))
                throw new ModelFormatException(source, $"tensor {what} has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}] from the config");
        }

        Expect(Embed, "token embedding", c.VocabSize, c.DModel);
        if (c.Positional == PositionalKind.Learned)
            Expect(PosEmbed, "position embedding", c.ContextLength, c.DModel);
        Expect(Unembed, "unembedding", c.VocabSize, c.DModel);
        Expect(LnFinalWeight, "final norm weight", c.DModel);
        if (Blocks.Count != c.NLayers)
            throw new ModelFormatException(source, $"found {Blocks.Count} blocks, the config says {c.NLayers}");
        long qkv = (long)(c.NHeads + 2 * c.NKvHeads) * c.DHead;
        long mlpIn = c.GatedMlp ? 2L * c.DMlp : c.DMlp;
        if (c.UnembedBias)
            Expect(UnembedBias, "unembedding bias", c.VocabSize);
        for (int i = 0; i < Blocks.Count; i++)
        {
            var b = Blocks[i];
            if (c.PreNorms)
                Expect(b.Ln1Weight, $"layer {i} first norm weight", c.DModel);
            if (c.PreNorms && c.Residual != ResidualKind.ParallelSharedNorm)
                Expect(b.Ln2Weight, $"layer {i} second norm weight", c.DModel);
            if (c.PostNorms)
            {
                Expect(b.Ln1PostWeight, $"layer {i} attention post-norm weight", c.DModel);
                Expect(b.Ln2PostWeight, $"layer {i} MLP post-norm weight", c.DModel);
            }
            if (c.QkNorm != QkNormKind.None)
            {
                bool whole = c.QkNorm == QkNormKind.WholeProjection;
                Expect(b.QNormWeight, $"layer {i} q norm weight", whole ? (long)c.NHeads * c.DHead : c.DHead);
                Expect(b.KNormWeight, $"layer {i} k norm weight", whole ? (long)c.NKvHeads * c.DHead : c.DHead);
            }
            Expect(b.Qkv, $"layer {i} q/k/v projection", qkv, c.DModel);
            if (b.QkvBias is not null) Expect(b.QkvBias, $"layer {i} q/k/v bias", qkv);
            Expect(b.Out, $"layer {i} attention output projection", c.DModel, (long)c.NHeads * c.DHead);
            Expect(b.MlpIn, $"layer {i} MLP input projection", mlpIn, c.DModel);
            Expect(b.MlpOut, $"layer {i} MLP output projection", c.DModel, c.DMlp);
        }
    }

    public void Dispose()
    {
        Embed.Dispose();
        PosEmbed?.Dispose();
        foreach (var b in Blocks)
            b.Dispose();
        LnFinalWeight.Dispose();
        LnFinalBias?.Dispose();
        if (!ReferenceEquals(Unembed, Embed))
            Unembed.Dispose();
        UnembedBias?.Dispose();
    }
}
