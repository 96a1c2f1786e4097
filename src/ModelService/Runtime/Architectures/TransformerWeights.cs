using static TorchSharp.torch;

namespace InterpMesh.Runtime.Architectures;

/// <summary>
/// The weights of one block in the runtime's canonical layout. Linear weights are <c>[out, in]</c>
/// (GPT-2's Conv1D weights are transposed at load). q, k and v are fused into one matrix of
/// <c>[(n_heads + 2·n_kv_heads)·d_head, d_model]</c> rows (q rows, then k, then v), and a SwiGLU
/// MLP's gate and up projections into one <c>[2·d_mlp, d_model]</c> (gate rows first), so each is
/// one matrix multiply. Rotary q/k rows are in rotate_half order.
/// </summary>
public sealed class BlockWeights : IDisposable
{
    public required Tensor Ln1Weight { get; init; }
    public Tensor? Ln1Bias { get; init; }
    public required Tensor Qkv { get; init; }
    public Tensor? QkvBias { get; init; }
    public required Tensor Out { get; init; }
    public Tensor? OutBias { get; init; }
    public required Tensor Ln2Weight { get; init; }
    public Tensor? Ln2Bias { get; init; }
    public required Tensor MlpIn { get; init; }
    public Tensor? MlpInBias { get; init; }
    public required Tensor MlpOut { get; init; }
    public Tensor? MlpOutBias { get; init; }

    public IEnumerable<Tensor> All() =>
        new[] { Ln1Weight, Ln1Bias, Qkv, QkvBias, Out, OutBias, Ln2Weight, Ln2Bias, MlpIn, MlpInBias, MlpOut, MlpOutBias }
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
                Ln1Weight = b.Ln1Weight.to(device), Ln1Bias = Move(b.Ln1Bias), Qkv = b.Qkv.to(device), QkvBias = Move(b.QkvBias),
                Out = b.Out.to(device), OutBias = Move(b.OutBias), Ln2Weight = b.Ln2Weight.to(device), Ln2Bias = Move(b.Ln2Bias),
                MlpIn = b.MlpIn.to(device), MlpInBias = Move(b.MlpInBias), MlpOut = b.MlpOut.to(device), MlpOutBias = Move(b.MlpOutBias),
            }).ToList(),
            LnFinalWeight = LnFinalWeight.to(device),
            LnFinalBias = Move(LnFinalBias),
            Unembed = ReferenceEquals(Unembed, Embed) ? embed : Unembed.to(device),
        };
    }

    public long ParameterCount =>
        Embed.numel() + (PosEmbed?.numel() ?? 0) + Blocks.Sum(b => b.All().Sum(t => t.numel()))
        + LnFinalWeight.numel() + (LnFinalBias?.numel() ?? 0) + (ReferenceEquals(Unembed, Embed) ? 0 : Unembed.numel());

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
        long mlpIn = c.Mlp == MlpKind.SwiGlu ? 2L * c.DMlp : c.DMlp;
        for (int i = 0; i < Blocks.Count; i++)
        {
            var b = Blocks[i];
            Expect(b.Ln1Weight, $"layer {i} first norm weight", c.DModel);
            Expect(b.Qkv, $"layer {i} q/k/v projection", qkv, c.DModel);
            if (b.QkvBias is not null) Expect(b.QkvBias, $"layer {i} q/k/v bias", qkv);
            Expect(b.Out, $"layer {i} attention output projection", c.DModel, (long)c.NHeads * c.DHead);
            Expect(b.Ln2Weight, $"layer {i} second norm weight", c.DModel);
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
    }
}
