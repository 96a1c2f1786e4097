using static TorchSharp.torch;

namespace InterpMesh.Runtime.Architectures;

/// <summary>
/// The weights of one block in the runtime's compute layout. Linear weights are <c>[in, out]</c>,
/// contiguous, and applied as <c>x · W</c> (TransformerLens' orientation; GPT-2's Conv1D layout).
/// PyTorch's <c>nn.Linear</c> stores <c>[out, in]</c>, which loaders read and convert once with
/// <see cref="TransformerWeights.FromCheckpointLayout"/>: oneMKL multiplies by a stored transpose
/// 1.5–2.8× slower at the few rows of a decode step (docs/runtime.md, "Weight layout").
/// q, k and v are fused into one matrix of <c>[d_model, (n_heads + 2·n_kv_heads)·d_head]</c>
/// (q columns, then k, then v), and a SwiGLU MLP's gate and up projections into one
/// <c>[d_model, 2·d_mlp]</c> (gate columns first), so each is one matrix multiply. Rotary q/k
/// columns are in the order the config's rotary style expects (rotate_half unless
/// <see cref="ModelConfig.RotaryInterleaved"/>). Norm gains are stored as applied (Gemma's (1 + w)
/// already added).
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

/// <summary>All weights of a model in the compute layout (see <see cref="BlockWeights"/>).</summary>
public sealed class TransformerWeights : IDisposable
{
    /// <summary><c>[vocab, d_model]</c>; with tied embeddings a view of <see cref="Unembed"/> transposed.</summary>
    public required Tensor Embed { get; init; }
    /// <summary><c>[context, d_model]</c>, learned positions only.</summary>
    public Tensor? PosEmbed { get; init; }
    public required IReadOnlyList<BlockWeights> Blocks { get; init; }
    public required Tensor LnFinalWeight { get; init; }
    public Tensor? LnFinalBias { get; init; }
    /// <summary><c>[d_model, vocab]</c>, contiguous; with tied embeddings <see cref="Embed"/> is its transposed view.</summary>
    public required Tensor Unembed { get; init; }
    /// <summary><c>[vocab]</c>, GPT-J's lm_head bias.</summary>
    public Tensor? UnembedBias { get; init; }
    /// <summary>Embedding and unembedding share their memory (<c>tie_word_embeddings</c>).</summary>
    public bool Tied { get; init; }

    /// <summary>Every tensor handle (a tied embedding's view included, so that all are detached and disposed).</summary>
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

    /// <summary>
    /// Converts weights in checkpoint layout — linear weights <c>[out, in]</c> as <c>nn.Linear</c>
    /// stores them, the unembedding <c>[vocab, d_model]</c> (the same tensor as the embedding when
    /// tied) — to the compute layout, one matrix at a time: each original is disposed as soon as its
    /// transposed copy exists, so loading needs one matrix of headroom, not a second model. A matrix
    /// that is already a transposed view of contiguous memory (GPT-2's Conv1D) is not copied.
    /// </summary>
    public static TransformerWeights FromCheckpointLayout(TransformerWeights w)
    {
        static Tensor T(Tensor outIn)
        {
            // The view must go at once too: it holds the original's memory.
            var view = outIn.t();
            var inOut = view.contiguous();
            if (!ReferenceEquals(inOut, view))
                view.Dispose();
            outIn.Dispose();
            return inOut;
        }
        bool tied = ReferenceEquals(w.Unembed, w.Embed);
        var unembed = T(w.Unembed);
        return new TransformerWeights
        {
            Embed = tied ? unembed.t() : w.Embed,
            PosEmbed = w.PosEmbed,
            Blocks = w.Blocks.Select(b => new BlockWeights
            {
                Ln1Weight = b.Ln1Weight, Ln1Bias = b.Ln1Bias, Qkv = T(b.Qkv), QkvBias = b.QkvBias,
                Out = T(b.Out), OutBias = b.OutBias, Ln2Weight = b.Ln2Weight, Ln2Bias = b.Ln2Bias,
                MlpIn = T(b.MlpIn), MlpInBias = b.MlpInBias, MlpOut = T(b.MlpOut), MlpOutBias = b.MlpOutBias,
                Ln1PostWeight = b.Ln1PostWeight, Ln2PostWeight = b.Ln2PostWeight, QNormWeight = b.QNormWeight, KNormWeight = b.KNormWeight,
            }).ToList(),
            LnFinalWeight = w.LnFinalWeight,
            LnFinalBias = w.LnFinalBias,
            Unembed = unembed,
            UnembedBias = w.UnembedBias,
            Tied = tied,
        };
    }

    /// <summary>A copy on another device (this object keeps its own tensors).</summary>
    public TransformerWeights To(Device device)
    {
        Tensor? Move(Tensor? t) => t?.to(device);
        var unembed = Unembed.to(device);
        var embed = Tied ? unembed.t() : Embed.to(device);
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
            Unembed = unembed,
            UnembedBias = Move(UnembedBias),
            Tied = Tied,
        };
    }

    public long ParameterCount =>
        Embed.numel() + (PosEmbed?.numel() ?? 0) + Blocks.Sum(b => b.All().Sum(t => t.numel()))
        + LnFinalWeight.numel() + (LnFinalBias?.numel() ?? 0) + (Tied ? 0 : Unembed.numel()) + (UnembedBias?.numel() ?? 0);

    /// <summary>Bytes of weight memory (a tied embedding counted once).</summary>
    public long ByteCount => AllTensors().Where(t => !(Tied && ReferenceEquals(t, Embed))).Sum(t => t.numel() * t.ElementSize);

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

        void ExpectLinear(Tensor t, string what, long outputs, long inputs)
        {
            if (!t.shape.SequenceEqual([inputs, outputs]))
                throw new ModelFormatException(source, $"tensor {what} has shape [{string.Join(", ", t.shape.Reverse())}], expected [{outputs}, {inputs}] from the config");
        }

        Expect(Embed, "token embedding", c.VocabSize, c.DModel);
        if (c.Positional == PositionalKind.Learned)
            Expect(PosEmbed, "position embedding", c.ContextLength, c.DModel);
        Expect(Unembed, "unembedding", c.DModel, c.VocabSize);
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
            // Stated [out, in], as in the checkpoint, so that a wrong file reads as it would in transformers.
            ExpectLinear(b.Qkv, $"layer {i} q/k/v projection", qkv, c.DModel);
            if (b.QkvBias is not null) Expect(b.QkvBias, $"layer {i} q/k/v bias", qkv);
            ExpectLinear(b.Out, $"layer {i} attention output projection", c.DModel, (long)c.NHeads * c.DHead);
            ExpectLinear(b.MlpIn, $"layer {i} MLP input projection", mlpIn, c.DModel);
            ExpectLinear(b.MlpOut, $"layer {i} MLP output projection", c.DModel, c.DMlp);
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
        Unembed.Dispose();
        UnembedBias?.Dispose();
    }
}
