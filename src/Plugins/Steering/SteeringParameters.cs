using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Text.Json.Serialization;

namespace InterpMesh.Plugins.Steering;

/// <summary>The steering plugin's parameters: one class per mode (the manifest's schema has one form per mode).</summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "mode")]
[JsonDerivedType(typeof(ExtractParameters), "extract")]
[JsonDerivedType(typeof(ApplyParameters), "apply")]
[JsonDerivedType(typeof(FunctionVectorParameters), "function_vector")]
[DefaultMode("extract")]
public abstract class SteeringParameters;

/// <summary>mode "extract" (the default): steering vectors from contrastive pairs.</summary>
public sealed class ExtractParameters : SteeringParameters
{
    [Description("texts showing the behaviour, one per pair")]
    public IReadOnlyList<string>? Positive { get; init; }

    [Description("texts without it, one per positive text")]
    public IReadOnlyList<string>? Negative { get; init; }

    [Description("layers to extract at (default: every layer)")]
    public IReadOnlyList<int>? Layers { get; init; }

    [Description("artifact name of the vectors (default: steering/<job id>)")]
    public string? SaveAs { get; init; }

    [Description("also save a llama.cpp GGUF control vector: direction.L is the vector of blocks.L.hook_resid_post; block 0 is left out (llama.cpp cannot steer it)")]
    public bool ExportGguf { get; init; }

    [Description("scale each GGUF direction to unit length, as llama.cpp's cvector-generator does (default: the mean difference as measured)")]
    public bool GgufNormalize { get; init; }

    [Range(1, 256)]
    public int BatchSize { get; init; } = 32;
}

/// <summary>How a saved vector was computed.</summary>
public enum SteeringMethod
{
    MeanDiff,
    Pca,
}

/// <summary>Which positions the vector is added at while generating.</summary>
public enum SteeringPositions
{
    All,
    Prompt,
    Generated,
}

/// <summary>mode "apply": sweep a saved vector's coefficient during generation.</summary>
public sealed class ApplyParameters : SteeringParameters
{
    [Description("the artifact saved by extract, or an artifact holding a llama.cpp / repeng GGUF control vector (direction.L steers blocks.L.hook_resid_post)")]
    public string? Vector { get; init; }

    [Description("which direction of an extract artifact (default mean_diff); a GGUF control vector has one direction per block")]
    public SteeringMethod? Method { get; init; }

    public int Layer { get; init; }

    [MinLength(1)]
    public IReadOnlyList<double> Coefficients { get; init; } = [0, 1, 2, 4];

    public IReadOnlyList<string>? Prompts { get; init; }

    public SteeringPositions Positions { get; init; } = SteeringPositions.All;

    [Range(1, 256)]
    public int MaxNewTokens { get; init; } = 12;

    [Description("single-token words whose log-probability the vector should raise")]
    public IReadOnlyList<string>? Target { get; init; }

    [Description("single-token words it should lower")]
    public IReadOnlyList<string>? Control { get; init; }

    [Description("a saved probe that judges the generations")]
    public ClassifierSettings? Classifier { get; init; }
}

/// <summary>A probe saved by the probing plugin, and the class whose probability is the behaviour metric.</summary>
public sealed class ClassifierSettings
{
    [Description("a probe artifact saved by the probing plugin")]
    public required string Probe { get; init; }

    [Description("the class whose probability is the behaviour metric")]
    public required string Class { get; init; }
}

/// <summary>mode "function_vector": Todd et al.'s function vectors and the heads' indirect effects.</summary>
public sealed class FunctionVectorParameters : SteeringParameters
{
    public IReadOnlyList<string>? IclPrompts { get; init; }

    public IReadOnlyList<string>? Answers { get; init; }

    public IReadOnlyList<string>? ShuffledPrompts { get; init; }

    public IReadOnlyList<string>? ZeroShot { get; init; }

    public IReadOnlyList<string>? ZeroShotAnswers { get; init; }

    [Range(1, int.MaxValue)]
    public int TopHeads { get; init; } = 10;

    public int Layer { get; init; }
}
