namespace InterpMesh.Runtime.Architectures;

/// <summary>How each block normalises its input.</summary>
public enum NormKind { LayerNorm, RmsNorm }

/// <summary>How token positions enter the model.</summary>
public enum PositionalKind
{
    /// <summary>A learned position embedding added to the token embedding (GPT-2).</summary>
    Learned,
    /// <summary>Rotary embeddings on the first <see cref="ModelConfig.RotaryDim"/> dims of q and k,
    /// rotate_half convention (Hugging Face Llama) unless <see cref="ModelConfig.RotaryInterleaved"/>
    /// (GPT-J). llama2.c's adjacent-pair RoPE is converted to rotate_half at load time by permuting q/k rows.</summary>
    Rotary,
}

/// <summary>The feed-forward block.</summary>
public enum MlpKind
{
    /// <summary>W_out · gelu_tanh(W_in · x + b_in) + b_out (GPT-2's "gelu_new").</summary>
    GeluTanh,
    /// <summary>W_down · (silu(W_gate · x) ⊙ W_up · x) (Llama, Qwen2, Mistral).</summary>
    SwiGlu,
    /// <summary>W_out · gelu_erf(W_in · x + b_in) + b_out (GPT-NeoX's "gelu").</summary>
    Gelu,
    /// <summary>W_down · (gelu_tanh(W_gate · x) ⊙ W_up · x) (Gemma's GeGLU).</summary>
    GeGlu,
}

/// <summary>Which residual layout a block has.</summary>
public enum ResidualKind
{
    /// <summary>x + attn(ln1 x), then + mlp(ln2 ·) (GPT-2, Llama, ...).</summary>
    Sequential,
    /// <summary>x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX <c>use_parallel_residual</c>).</summary>
    Parallel,
    /// <summary>x + attn(ln1 x) + mlp(ln1 x): one norm feeds both (GPT-J).</summary>
    ParallelSharedNorm,
}

/// <summary>Where a model normalises q and k (after the projection, before RoPE).</summary>
public enum QkNormKind
{
    None,
    /// <summary>RMSNorm over each head's <c>d_head</c> values (Qwen3, Gemma 3).</summary>
    PerHead,
    /// <summary>RMSNorm over the whole projection, all heads at once (OLMo-2).</summary>
    WholeProjection,
}

/// <summary>The rotary frequency schedule (Hugging Face <c>rope_type</c>).</summary>
public enum RopeScalingKind { None, Linear, Dynamic, Yarn, LongRope, Llama3 }

/// <summary>One rotary embedding: base, scaling and its parameters (absent ones keep Hugging Face's defaults).</summary>
public sealed record RopeSettings
{
    public double Theta { get; init; } = 10000.0;
    public RopeScalingKind Scaling { get; init; }
    public double Factor { get; init; } = 1.0;
    /// <summary>Context length the scaling was designed around (llama3, yarn, longrope).</summary>
    public int OriginalContext { get; init; }
    public double LowFreqFactor { get; init; } = 1.0;
    public double HighFreqFactor { get; init; } = 4.0;
    public double BetaFast { get; init; } = 32.0;
    public double BetaSlow { get; init; } = 1.0;
    public bool Truncate { get; init; } = true;
    /// <summary>Multiplier on cos and sin (yarn and longrope "attention_factor"); null = the type's default.</summary>
    public double? AttentionFactor { get; init; }
    public double? Mscale { get; init; }
    public double? MscaleAllDim { get; init; }
    public IReadOnlyList<double>? ShortFactor { get; init; }
    public IReadOnlyList<double>? LongFactor { get; init; }
}

/// <summary>
/// One normalised description of a decoder-only transformer. Every supported checkpoint format is
/// mapped onto it, and the single forward in <see cref="Transformer"/> reads only this.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name as the checkpoint states it (e.g. <c>GPT2LMHeadModel</c>, <c>llama2.c</c>).</summary>
    public required string Architecture { get; init; }

    /// <summary>The Hugging Face <c>model_type</c> (<c>llama</c>, <c>gpt2</c>, …): config.json's own value, <c>llama</c> for llama2.c.</summary>
    public string ModelType { get; init; } = "";
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
    /// <summary>Rotary scaling of (global) layers; null = plain RoPE with <see cref="RopeTheta"/>.</summary>
    public RopeSettings? Rope { get; init; }
    /// <summary>Rotary settings of sliding-window layers when they differ (Gemma 3's local base); null = same as <see cref="Rope"/>.</summary>
    public RopeSettings? LocalRope { get; init; }
    /// <summary>GPT-J's rotate_every_two: dims (2i, 2i+1) form a pair, instead of (i, i + rot/2).</summary>
    public bool RotaryInterleaved { get; init; }
    public bool TiedEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    /// <summary>The first end-of-sequence id (see <see cref="EosTokenIds"/> for all of them).</summary>
    public int? EosTokenId => EosTokenIds.Count > 0 ? EosTokenIds[0] : null;
    /// <summary>Every end-of-sequence id the config lists (<c>eos_token_id</c> may be a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>Block layout: sequential or parallel attention and MLP.</summary>
    public ResidualKind Residual { get; init; }
    /// <summary>False when blocks have no norm before attention and MLP (OLMo-2 normalises their outputs instead).</summary>
    public bool PreNorms { get; init; } = true;
    /// <summary>A norm on the attention output and on the MLP output before they join the residual (Gemma 2/3, OLMo-2).</summary>
    public bool PostNorms { get; init; }
    /// <summary>RMSNorm gain stored as w and applied as (1 + w) (Gemma); the loader adds the 1 in float32.</summary>
    public bool NormGainOffset { get; init; }
    public QkNormKind QkNorm { get; init; }
    /// <summary>Embeddings are multiplied by √d_model, rounded to the weight dtype (Gemma).</summary>
    public bool ScaleEmbeddings { get; init; }
    /// <summary>Multiplier on q·k; null = 1/√d_head.</summary>
    public double? AttentionScale { get; init; }
    /// <summary>GPT-2's <c>scale_attn_by_inverse_layer_idx</c>: scores of layer l are further divided by l + 1.</summary>
    public bool ScaleByInverseLayer { get; init; }
    /// <summary>Scores become cap·tanh(scores / cap) after scaling, before masking (Gemma 2).</summary>
    public double? AttnSoftcap { get; init; }
    /// <summary>Logits become cap·tanh(logits / cap) (Gemma 2/3).</summary>
    public double? FinalSoftcap { get; init; }
    /// <summary>Keys a sliding-window layer's query sees, its own position included; null = no sliding layers.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Which layers use the sliding window; null = every layer when <see cref="SlidingWindow"/> is set.</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }
    /// <summary>q, k, v and output projections have biases (<c>attention_bias</c>); the loader requires them.</summary>
    public bool AttentionBias { get; init; }
    /// <summary>The gated MLP's projections have biases (Llama's <c>mlp_bias</c>); the loader requires them.</summary>
    public bool MlpBias { get; init; }
    /// <summary>The unembedding has a bias (GPT-J's lm_head).</summary>
    public bool UnembedBias { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> attends through a sliding window.</summary>
    public bool IsSliding(int layer) => SlidingWindow is not null && (SlidingLayers is null || SlidingLayers[layer]);

    /// <summary>The factor q·k is multiplied by in layer <paramref name="layer"/>.</summary>
    public double ScoreScale(int layer) =>
        (AttentionScale ?? 1.0 / Math.Sqrt(DHead)) / (ScaleByInverseLayer ? layer + 1 : 1);

    /// <summary>Whether the MLP has a gate (SwiGLU, GeGLU): its input projection holds gate and up rows.</summary>
    public bool GatedMlp => Mlp is MlpKind.SwiGlu or MlpKind.GeGlu;

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
        Require(SlidingWindow is null || SlidingWindow > 0, $"sliding window must be positive, got {SlidingWindow}");
        Require(SlidingLayers is null || SlidingLayers.Count == NLayers, $"the per-layer attention types list {SlidingLayers?.Count} layers, the model has {NLayers}");
        Require(AttnSoftcap is null || AttnSoftcap > 0, $"attention soft-cap must be positive, got {AttnSoftcap}");
        Require(FinalSoftcap is null || FinalSoftcap > 0, $"final logit soft-cap must be positive, got {FinalSoftcap}");
        Require(AttentionScale is null || (AttentionScale > 0 && double.IsFinite(AttentionScale.Value)), $"attention scale must be positive, got {AttentionScale}");
        Require(Residual != ResidualKind.ParallelSharedNorm || PreNorms, "a parallel block with one shared norm needs pre-norms");
        Require(PreNorms || PostNorms, "a block needs pre-norms, post-norms or both");
        long parameters = (long)NLayers * ((long)DModel * DHead * (NHeads * 2 + NKvHeads * 2) + 3L * DModel * DMlp) + 2L * VocabSize * DModel;
        Require(parameters < 1L << 40, $"the configuration describes {parameters} parameters, more than any model this runtime can hold");
    }
}
