using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace InterpMesh.Plugins.RetrievalHeads;

/// <summary>The analyses the plugin can run.</summary>
public enum RetrievalAnalysis
{
    Retrieval,
    Detector,
    Ablation,
}

/// <summary>The retrieval-heads plugin's parameters (the manifest's JSON Schema is generated from them).</summary>
public sealed class RetrievalHeadsParameters
{
    [Description("analyses to run: retrieval (needle-in-a-haystack copy scores), detector (previous-token, duplicate and induction scores), ablation of the top heads")]
    public IReadOnlyList<RetrievalAnalysis> Analyses { get; init; } = [RetrievalAnalysis.Retrieval, RetrievalAnalysis.Detector, RetrievalAnalysis.Ablation];

    [Description("key-value recall trials (used unless text is given)")]
    public SyntheticTrials? Synthetic { get; init; }

    [Description("trials from the caller's needle, question and haystack")]
    public TextTrials? Text { get; init; }

    [Description("needle depths, percent of the context before the needle")]
    public IReadOnlyList<double> Depths { get; init; } = [0, 25, 50, 75, 100];

    [Description("trials per (context length, depth) cell")]
    [Range(1, int.MaxValue)]
    public int TrialsPerCell { get; init; } = 2;

    [Description("seed of the trial and random-head draws")]
    public int Seed { get; init; }

    [Description("ROUGE-1 / token recall above which a trial counts as recalled")]
    [Range(0.0, 1.0)]
    public double RecallThreshold { get; init; } = 0.5;

    [Description("retrieval score above which a head is a retrieval head")]
    [Range(0.0, double.PositiveInfinity)]
    public double ScoreThreshold { get; init; } = 0.1;

    [Description("heads to ablate (default: the retrieval heads found, at least 1)")]
    [Range(1, int.MaxValue)]
    public int? AblateK { get; init; }

    [Description("random head sets ablated as the control, each drawn with its own seed from the heads outside the top ones; reported as mean ± sd")]
    [Range(1, 100)]
    public int RandomDraws { get; init; } = 5;

    [Description("head-detector settings")]
    public DetectorSettings? Detector { get; init; }

    [Description("save every trial as an artifact")]
    public bool SaveTrials { get; init; } = true;
}

/// <summary>Synthetic key-value trials.</summary>
public sealed class SyntheticTrials
{
    [Description("single-token keys (default: random token ids)")]
    public IReadOnlyList<string>? Keys { get; init; }

    [Description("single-token values (default: random token ids)")]
    public IReadOnlyList<string>? Values { get; init; }

    [Description("at most one single-token separator before the question's key")]
    [MaxLength(1)]
    public IReadOnlyList<string>? Separator { get; init; }

    [Description("numbers of pairs per prompt (the grid's context lengths)")]
    public IReadOnlyList<int> Pairs { get; init; } = [4, 8];
}

/// <summary>Text trials: a needle in a haystack, and a question about it.</summary>
public sealed class TextTrials
{
    [Description("the sentence inserted into the haystack")]
    public required string Needle { get; init; }

    [Description("the part of the needle that answers the question (Wu et al.'s real_needle): the span whose copying is scored and the reference recall is measured against (default: the whole needle)")]
    public string? Answer { get; init; }

    [Description("ROUGE-1 recall with Porter stemming, as the reference (rouge_score, use_stemmer=True)")]
    public bool Stem { get; init; } = true;

    public required string Question { get; init; }

    public required string Haystack { get; init; }

    [Description("context lengths in tokens (default: half the model's context and all of it)")]
    public IReadOnlyList<int>? Lengths { get; init; }

    [Description("tokens to generate (default: the needle's length + 4)")]
    [Range(1, int.MaxValue)]
    public int? MaxNewTokens { get; init; }
}

/// <summary>TransformerLens' head-detector error measures.</summary>
public enum DetectorMeasure
{
    Mul,
    Abs,
}

/// <summary>Head-detector settings.</summary>
public sealed class DetectorSettings
{
    [Description("random repeated sequences to average over")]
    [Range(1, int.MaxValue)]
    public int Prompts { get; init; } = 16;

    [Description("length of the repeated sequence (default: min(20, context / 2))")]
    [Range(2, int.MaxValue)]
    public int? Length { get; init; }

    [Description("single-token words to draw the sequences from (default: any token)")]
    public IReadOnlyList<string>? Tokens { get; init; }

    [Description("your own prompts instead of random repeated sequences (texts, tokenized with BOS as TransformerLens' to_tokens does); scores are the mean over prompts")]
    public IReadOnlyList<string>? Texts { get; init; }

    [Description("TransformerLens' error measure: mul = Σ(A⊙D)/ΣA; abs = 1 − round(mean|A − D| · n, 3)")]
    public DetectorMeasure Measure { get; init; } = DetectorMeasure.Mul;

    public bool ExcludeBos { get; init; }

    public bool ExcludeCurrentToken { get; init; }
}
