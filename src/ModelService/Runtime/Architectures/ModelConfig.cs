namespace InterpMesh.Runtime.Architectures;

/// <summary>How each block normalises its input.</summary>
public enum NormKind { LayerNorm, RmsNorm }

/// <summary>How token positions enter the model.</summary>
public enum PositionalKind
{
    /// <summary>A learned position embedding added to the token embedding (GPT-2).</summary>
    Learned,
    /// <summary>Rotary embeddings on q and k, rotate_half convention (Hugging Face Llama). llama2.c's
    /// adjacent-pair RoPE is converted to this at load time by permuting q/k rows.</summary>
    Rotary,
}

/// <summary>The feed-forward block.</summary>
public enum MlpKind
{
    /// <summary>W_out · gelu_tanh(W_in · x + b_in) + b_out (GPT-2's "gelu_new").</summary>
    GeluTanh,
    /// <summary>W_down · (silu(W_gate · x) ⊙ W_up · x) (Llama, Qwen2, Mistral).</summary>
    SwiGlu,
}

/// <summary>
/// One normalised description of a decoder-only transformer. Every supported checkpoint format is
/// mapped onto it, and the single forward in <see cref="Transformer"/> reads only this.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name as the checkpoint states it (e.g. <c>GPT2LMHeadModel</c>, <c>llama2.c</c>).</summary>
    public required string Architecture { get; init; }
    public required int NLayers { get; init; }
    public required int DModel { get; init; }
    public required int NHeads { get; init; }
    public required int NKvHeads { get; init; }
    public required int DHead { get; init; }
    public required int DMlp { get; init; }
    public required int VocabSize { get; init; }
    public required int ContextLength { get; init; }
    public required NormKind Norm { get; init; }
    public required double NormEps { get; init; }
    public required PositionalKind Positional { get; init; }
    public required MlpKind Mlp { get; init; }
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary>Number of head dimensions rotated by RoPE (Llama rotates all of them).</summary>
    public int RotaryDim { get; init; }
    public bool TiedEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }

    /// <summary>Query heads per key/value head (1 without grouped-query attention).</summary>
    public int GroupSize => NHeads / NKvHeads;

    /// <summary>Checks the invariants the forward relies on; the message names the offending field.</summary>
    public void Validate(string source)
    {
        void Require(bool ok, string problem)
        {
            if (!ok)
                throw new ModelFormatException(source, problem);
        }

        Require(NLayers > 0, $"number of layers must be positive, got {NLayers}");
        Require(DModel > 0, $"hidden size must be positive, got {DModel}");
        Require(NHeads > 0, $"number of attention heads must be positive, got {NHeads}");
        Require(NKvHeads > 0 && NHeads % NKvHeads == 0, $"number of key/value heads ({NKvHeads}) must divide the number of attention heads ({NHeads})");
        Require(DHead > 0, $"head dimension must be positive, got {DHead}");
        Require(DMlp > 0, $"MLP width must be positive, got {DMlp}");
        Require(VocabSize > 0, $"vocabulary size must be positive, got {VocabSize}");
        Require(ContextLength > 0, $"context length must be positive, got {ContextLength}");
        Require(NormEps > 0, $"normalisation epsilon must be positive, got {NormEps}");
        Require(Positional != PositionalKind.Rotary || (RotaryDim > 0 && RotaryDim % 2 == 0 && RotaryDim <= DHead),
            $"rotary dimension must be even and at most the head dimension {DHead}, got {RotaryDim}");
        long parameters = (long)NLayers * ((long)DModel * DHead * (NHeads * 2 + NKvHeads * 2) + 3L * DModel * DMlp) + 2L * VocabSize * DModel;
        Require(parameters < 1L << 40, $"the configuration describes {parameters} parameters, more than any model this runtime can hold");
    }
}
