using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;

namespace InterpMesh.Plugins.SAE;

/// <summary>The SAE plugin's parameters: one class per mode (the manifest's schema has one form per mode).</summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "mode")]
[JsonDerivedType(typeof(TrainParameters), "train")]
[JsonDerivedType(typeof(EvaluateParameters), "evaluate")]
[JsonDerivedType(typeof(InspectParameters), "inspect")]
[JsonDerivedType(typeof(ExportDirectionParameters), "export_direction")]
[DefaultMode("train")]
public abstract class SaeParameters;

/// <summary>The SAE's architecture.</summary>
public enum SaeArchitecture
{
    Standard,
    [JsonStringEnumMemberName("topk")]
    TopK,
}

/// <summary>How activations are scaled before the SAE sees them.</summary>
public enum SaeNormalization
{
    None,
    ExpectedAverageOnlyIn,
}

/// <summary>Which SAELens config the saved folder carries.</summary>
public enum SaeLensConfigVersion
{
    /// <summary>SAELens 6.x: metadata with sae_lens_version, hook_name, model_name, ….</summary>
    [JsonStringEnumMemberName("6")]
    V6,

    /// <summary>SAELens 5.x's flat config (hook_name, hook_layer, model_name, … at the top), which 6.x also reads.</summary>
    [JsonStringEnumMemberName("5")]
    V5,
}

/// <summary>mode "train" (the default): train an SAE on activations streamed from the model service.</summary>
public sealed class TrainParameters : SaeParameters
{
    [Description("the hook to train on, e.g. blocks.0.hook_resid_post")]
    public string? Hook { get; init; }

    [Description("training texts, inline")]
    public IReadOnlyList<string>? Texts { get; init; }

    [Description("artifact with a JSONL file of {\"text\": …} rows")]
    public string? Dataset { get; init; }

    [Description("texts the model generates from prompts (used instead of texts or dataset)")]
    public GenerateSettings? Generate { get; init; }

    public SaeArchitecture Architecture { get; init; } = SaeArchitecture.TopK;

    [Description("latents (default: 4 × the hook's width)")]
    [Range(1, int.MaxValue)]
    public int? DSae { get; init; }

    [Description("active latents per token, topk (default: min(8, d_sae))")]
    [Range(1, int.MaxValue)]
    public int? K { get; init; }

    [Description("L1 penalty, standard")]
    [Range(0.0, double.PositiveInfinity)]
    public double L1Coefficient { get; init; } = 5.0;

    [Description("Adam learning rate (default: 3e-3 for topk, 1e-3 for standard)")]
    [Range(0.0, double.PositiveInfinity)]
    public double? LearningRate { get; init; }

    [Range(1, int.MaxValue)]
    public int Steps { get; init; } = 500;

    [Description("tokens per step")]
    [Range(1, int.MaxValue)]
    public int BatchTokens { get; init; } = 256;

    [Description("tokens in the shuffle buffer (default: 8 × batch_tokens)")]
    [Range(1, int.MaxValue)]
    public int? BufferTokens { get; init; }

    [Description("expected_average_only_in: train on activations scaled to mean norm √d_in; the scale is folded into the saved weights")]
    public SaeNormalization Normalize { get; init; } = SaeNormalization.None;

    [Description("the SAELens config written: \"6\" (SAELens 6.x, default) or \"5\" (5.x's flat config, which 6.x also reads)")]
    public SaeLensConfigVersion SaelensVersion { get; init; } = SaeLensConfigVersion.V6;

    [Description("save a checkpoint every this many steps (default: none)")]
    [Range(1, int.MaxValue)]
    public int? CheckpointEvery { get; init; }

    [Description("a checkpoint to continue from")]
    public string? ResumeFrom { get; init; }

    [Description("artifact name of the SAE (default: sae/<job id>)")]
    public string? SaveAs { get; init; }

    public int Seed { get; init; }
}

/// <summary>Texts the model writes itself: each prompt sampled several times, seeded per sample.</summary>
public sealed class GenerateSettings
{
    public required IReadOnlyList<string> Prompts { get; init; }

    [Range(1, int.MaxValue)]
    public int SamplesPerPrompt { get; init; } = 4;

    [Range(1, int.MaxValue)]
    public int MaxNewTokens { get; init; } = 32;

    [Range(0.0, double.PositiveInfinity)]
    public double Temperature { get; init; } = 1.0;
}

/// <summary>mode "evaluate": L0, explained variance, dead and dense latents, CE loss recovered.</summary>
public sealed class EvaluateParameters : SaeParameters
{
    [Description("an SAE artifact (SAELens folder)")]
    public string? Sae { get; init; }

    [Description("must be the SAE's hook (default: the SAE's); required for Gemma Scope folders (params.npz), which name none")]
    public string? Hook { get; init; }

    [Description("the activation scale of an unfolded expected_average_only_in SAE whose folder lacks it (SAELens' norm_scaling_factor)")]
    [Range(0.0, double.PositiveInfinity)]
    public double? NormScalingFactor { get; init; }

    [Description("evaluation texts, inline")]
    public IReadOnlyList<string>? Texts { get; init; }

    [Description("artifact with a JSONL file of {\"text\": …} rows")]
    public string? Dataset { get; init; }
}

/// <summary>mode "inspect": top features per token, or one feature's contexts, density and promoted tokens.</summary>
public sealed class InspectParameters : SaeParameters
{
    [Description("an SAE artifact (SAELens folder)")]
    public string? Sae { get; init; }

    [Description("must be the SAE's hook (default: the SAE's); required for Gemma Scope folders (params.npz), which name none")]
    public string? Hook { get; init; }

    [Description("the activation scale of an unfolded expected_average_only_in SAE whose folder lacks it (SAELens' norm_scaling_factor)")]
    [Range(0.0, double.PositiveInfinity)]
    public double? NormScalingFactor { get; init; }

    [Description("texts to inspect, inline")]
    public IReadOnlyList<string>? Texts { get; init; }

    [Description("artifact with a JSONL file of {\"text\": …} rows")]
    public string? Dataset { get; init; }

    [Description("one latent to inspect (default: the top latents of every token)")]
    [Range(0, int.MaxValue)]
    public int? Feature { get; init; }

    [Description("contexts and promoted/suppressed tokens to list")]
    [Range(1, int.MaxValue)]
    public int Top { get; init; } = 5;
}

/// <summary>mode "export_direction": a latent's decoder direction saved as a steering vector.</summary>
public sealed class ExportDirectionParameters : SaeParameters
{
    [Description("an SAE artifact (SAELens folder)")]
    public string? Sae { get; init; }

    [Description("must be the SAE's hook (default: the SAE's)")]
    public string? Hook { get; init; }

    [Description("the activation scale of an unfolded expected_average_only_in SAE whose folder lacks it (SAELens' norm_scaling_factor)")]
    [Range(0.0, double.PositiveInfinity)]
    public double? NormScalingFactor { get; init; }

    [Description("the latent whose decoder direction is exported")]
    [Range(0, int.MaxValue)]
    public int? Feature { get; init; }

    [Description("artifact name of the vector (default: steering/sae-feature-<feature>)")]
    public string? SaveAs { get; init; }
}
