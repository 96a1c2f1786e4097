using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Engine.Requests;

/// <summary>One input sequence: text (encoded with the model's tokenizer) or token ids.</summary>
public sealed class InputSpec
{
    private InputSpec(string? text, IReadOnlyList<int>? ids)
    {
        Text = text;
        Ids = ids;
    }

    public string? Text { get; }
    public IReadOnlyList<int>? Ids { get; }

    public static InputSpec FromText(string text) => new(text, null);
    public static InputSpec FromIds(IReadOnlyList<int> ids) => new(null, ids);
    /// <summary>Neither text nor ids (a wire input with nothing set): refused by validation.</summary>
    public static InputSpec Empty { get; } = new(null, null);
}

/// <summary>Optional reduction of a capture over its selected positions.</summary>
public enum CaptureReduction
{
    None,
    /// <summary>Mean over the selected positions (pos dimension = 1).</summary>
    Mean,
}

/// <summary>What to capture: hook names or globs, which positions, in which dtype, reduced or not.</summary>
public sealed class CaptureSpec
{
    public required IReadOnlyList<string> Hooks { get; init; }
    public PositionSelection Positions { get; init; } = PositionSelection.All;
    public ScalarType DType { get; init; } = ScalarType.Float32;
    public CaptureReduction Reduction { get; init; } = CaptureReduction.None;
}

/// <summary>One forward over a batch: captures, interventions, logits, loss.</summary>
public sealed class RunSpec
{
    public required IReadOnlyList<InputSpec> Inputs { get; init; }
    public IReadOnlyList<CaptureSpec> Captures { get; init; } = [];
    /// <summary>Interventions; the engine copies their values, the caller keeps ownership of its tensors.</summary>
    public IReadOnlyList<Intervention> Interventions { get; init; } = [];
    public LogitsMode Logits { get; init; } = LogitsMode.None;
    /// <summary>When &gt; 0, only the top-k ids and values per position instead of full logits.</summary>
    public int TopK { get; init; }
    /// <summary>Also the mean next-token cross-entropy over real tokens.</summary>
    public bool Loss { get; init; }
    public PaddingSide Padding { get; init; } = PaddingSide.Left;
    /// <summary>Also differentiate a metric of this forward with respect to hook activations (null: no gradients).</summary>
    public GradientSpec? Gradient { get; init; }
}

/// <summary>The scalar a gradient request differentiates (computed per row, then summed over rows).</summary>
public enum GradientMetric
{
    /// <summary>None chosen: refused by validation.</summary>
    Unset,
    /// <summary>The row's mean next-token cross-entropy over its real tokens.</summary>
    Loss,
    /// <summary>The logit of a token at a position.</summary>
    Logit,
    /// <summary>The log-probability of a token at a position.</summary>
    LogProb,
    /// <summary>Mean logit of the row's correct set minus mean logit of its incorrect set, at its last real token.</summary>
    LogitDifference,
}

/// <summary>
/// A gradient request: d metric / d activation at each hook, selected (positions, dtype) as captures are.
/// </summary>
public sealed class GradientSpec
{
    public required GradientMetric Metric { get; init; }
    /// <summary>Logit / LogProb: one token per row, or one for every row.</summary>
    public IReadOnlyList<int> Tokens { get; init; } = [];
    /// <summary>Logit / LogProb: absolute position in the padded sequence (negative counts from the end); null = each row's last real token.</summary>
    public int? Position { get; init; }
    /// <summary>LogitDifference: one set per row, or one for every row.</summary>
    public IReadOnlyList<IReadOnlyList<int>> Correct { get; init; } = [];
    /// <summary>LogitDifference: one set per row, or one for every row.</summary>
    public IReadOnlyList<IReadOnlyList<int>> Incorrect { get; init; } = [];
    /// <summary>Hook names or globs.</summary>
    public IReadOnlyList<string> Hooks { get; init; } = [];
    public PositionSelection Positions { get; init; } = PositionSelection.All;
    public ScalarType DType { get; init; } = ScalarType.Float32;
}

/// <summary>Generation from a batch of prompts (left-padded together), with per-step captures and interventions.</summary>
public sealed class GenerateSpec
{
    public required IReadOnlyList<InputSpec> Prompts { get; init; }
    public required int MaxNewTokens { get; init; }
    public SamplingOptions Sampling { get; init; } = new();
    /// <summary>A row stops after emitting one of these; null = the model's EOS (if any); empty = never stop early.</summary>
    public IReadOnlyList<int>? StopIds { get; init; }
    public IReadOnlyList<CaptureSpec> Captures { get; init; } = [];
    public IReadOnlyList<Intervention> Interventions { get; init; } = [];
}
