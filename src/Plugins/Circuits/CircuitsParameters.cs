using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;

namespace InterpMesh.Plugins.Circuits;

/// <summary>
/// The circuits plugin's parameters: one class per mode (the manifest's schema has one form per
/// mode); the prompt pairs, the metric and the direction are shared by every mode.
/// </summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "mode")]
[JsonDerivedType(typeof(ActivationPatchingParameters), "activation_patching")]
[JsonDerivedType(typeof(LogitLensParameters), "logit_lens")]
[JsonDerivedType(typeof(DirectLogitAttributionParameters), "direct_logit_attribution")]
[JsonDerivedType(typeof(PathPatchingParameters), "path_patching")]
[JsonDerivedType(typeof(AttributionPatchingParameters), "attribution_patching")]
[DefaultMode("activation_patching")]
public abstract class CircuitsParameters
{
    [Description("prompt pairs: clean and corrupted prompts of the same token length, the answer (single token) the clean prompt should predict and a wrong answer (single token)")]
    public IReadOnlyList<PromptPair>? Pairs { get; init; }

    [Description("instead of pairs: an artifact holding a JSONL file (pairs.jsonl, or its only .jsonl file) of {clean, corrupted, answer, wrong} objects, one per line")]
    public string? PairsArtifact { get; init; }

    [Description("logit_diff: logit(answer) - logit(wrong) at the last position; prob: the answer's probability; loss: -log p(answer). Averaged over the pairs")]
    public CircuitMetric Metric { get; init; } = CircuitMetric.LogitDiff;

    [Description("denoising: run the corrupted prompt and patch clean activations in; noising: run the clean prompt and patch corrupted activations in")]
    public PatchDirection Direction { get; init; } = PatchDirection.Denoising;

    [Description("artifact name of the effect tensors (default: circuits/<job id>)")]
    public string? SaveAs { get; init; }
}

/// <summary>A clean/corrupted prompt pair with the answer and a wrong answer.</summary>
public sealed class PromptPair
{
    [Description("the prompt showing the behaviour")]
    public string? Clean { get; init; }

    [Description("the same number of tokens, changed so the behaviour is gone")]
    public string? Corrupted { get; init; }

    [Description("the token the clean prompt should predict next (one token, e.g. \" Mary\" with its space for GPT-2)")]
    public string? Answer { get; init; }

    [Description("a wrong answer (one token), e.g. the one the corrupted prompt predicts")]
    public string? Wrong { get; init; }
}

/// <summary>The metric measured on the last position's logits.</summary>
public enum CircuitMetric
{
    LogitDiff,
    Prob,
    Loss,
}

/// <summary>Which run is patched with which.</summary>
public enum PatchDirection
{
    Denoising,
    Noising,
}

/// <summary>What activation patching sweeps.</summary>
public enum PatchComponent
{
    ResidPre,
    AttnOut,
    MlpOut,
    Heads,
    HeadsByPosition,
    Q,
    K,
    V,
    Pattern,
}

/// <summary>mode "activation_patching" (the default): patch one component at a time and measure the metric.</summary>
public sealed class ActivationPatchingParameters : CircuitsParameters
{
    [Description("components to sweep: resid_pre, attn_out, mlp_out (layer x position), heads (attn.hook_z per head, all positions), heads_by_position, q, k, v, pattern (per head)")]
    [MinLength(1)]
    public IReadOnlyList<PatchComponent> Components { get; init; } = [PatchComponent.Heads];

    [Description("layers to sweep (default: every layer)")]
    public IReadOnlyList<int>? Layers { get; init; }
}

/// <summary>mode "logit_lens": the residual stream after each layer through the model's own final norm and unembedding.</summary>
public sealed class LogitLensParameters : CircuitsParameters
{
    [Description("top tokens reported per layer and position")]
    [Range(1, 100)]
    public int TopK { get; init; } = 5;

    [Description("also read blocks.0.hook_resid_pre (the embeddings) as layer -1")]
    public bool IncludeEmbeddings { get; init; } = true;

    [Description("positions to report (default: every position; negative counts from the end)")]
    public IReadOnlyList<int>? Positions { get; init; }
}

/// <summary>mode "direct_logit_attribution": each head's, MLP's and embedding's direct share of the logit difference.</summary>
public sealed class DirectLogitAttributionParameters : CircuitsParameters
{
    [Description("components listed in the summary's top list")]
    [Range(1, 1000)]
    public int Top { get; init; } = 10;
}

/// <summary>Which input of the receiver heads a sender's effect may reach.</summary>
public enum ReceiverInput
{
    Q,
    K,
    V,
    Resid,
}

/// <summary>A head, as layer and index.</summary>
public sealed class HeadRef
{
    public int Layer { get; init; }

    public int Head { get; init; }
}

/// <summary>mode "path_patching": sender heads' clean output reaching only the receivers' q, k or v input (or the final residual).</summary>
public sealed class PathPatchingParameters : CircuitsParameters
{
    [Description("receiver heads (their q, k or v input is patched); not needed for the resid receiver")]
    public IReadOnlyList<HeadRef>? Receivers { get; init; }

    [Description("receiver inputs: q, k, v (the receivers' attn.hook_q/k/v) or resid (the final residual stream)")]
    [MinLength(1)]
    public IReadOnlyList<ReceiverInput> ReceiverInputs { get; init; } = [ReceiverInput.Q, ReceiverInput.K, ReceiverInput.V];

    [Description("sender heads (default: every head of the layers below the lowest receiver; for resid alone, every head)")]
    public IReadOnlyList<HeadRef>? Senders { get; init; }
}

/// <summary>mode "attribution_patching": gradient x activation difference for every head, MLP and residual position.</summary>
public sealed class AttributionPatchingParameters : CircuitsParameters
{
    [Description("also patch the top N nodes (heads and MLPs, by |estimate|) for real and report the Spearman rank correlation (0: no check)")]
    [Range(0, 10000)]
    public int VerifyTop { get; init; }
}
