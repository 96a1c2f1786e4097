using System.Buffers;
using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace InterpMesh.Plugins.Probing;

/// <summary>
/// The probing plugin's parameters: one class per mode (the manifest's schema has one form per mode).
/// Both modes read their examples the same way: <c>rows</c>, <c>texts</c> + <c>labels</c>, or <c>dataset</c>.
/// </summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "mode")]
[JsonDerivedType(typeof(TrainParameters), "train")]
[JsonDerivedType(typeof(ApplyParameters), "apply")]
[DefaultMode("train")]
public abstract class ProbingParameters
{
    [Description("labelled examples: {text, label, target_index?, target_span?: [start, end)}")]
    public IReadOnlyList<ProbingRowParameters>? Rows { get; init; }

    [Description("texts, with labels (and target_indices) in the same order")]
    public IReadOnlyList<string>? Texts { get; init; }

    [Description("one label per text: a string, an integer or a boolean")]
    [JsonConverter(typeof(LabelListConverter))]
    [ParameterSchema("""{"type": ["array", "null"], "items": {"type": ["string", "integer", "boolean"]}}""")]
    public IReadOnlyList<string>? Labels { get; init; }

    [Description("one target token index per text (position: target)")]
    public IReadOnlyList<int>? TargetIndices { get; init; }

    [Description("artifact holding a JSONL file of rows")]
    public string? Dataset { get; init; }

    [Description("rows per forward")]
    [Range(1, 256)]
    public int BatchSize { get; init; } = 16;
}

/// <summary>One labelled example given inline (members other than these are ignored, as in a JSONL dataset).</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Skip)]
public sealed class ProbingRowParameters
{
    [Description("the example's text")]
    public required string Text { get; init; }

    [Description("a string, an integer or a boolean")]
    [JsonConverter(typeof(LabelConverter))]
    [ParameterSchema("""{"type": ["string", "integer", "boolean"]}""")]
    public string? Label { get; init; }

    [Description("token index of the target (position: target; counts the tokenizer's BOS)")]
    [Range(0, int.MaxValue)]
    public int? TargetIndex { get; init; }

    [Description("character span [start, end) of the target in the text")]
    [MinLength(2), MaxLength(2)]
    public IReadOnlyList<int>? TargetSpan { get; init; }
}

/// <summary>Where in a row the activations are read.</summary>
public enum ProbePosition
{
    Last,
    Target,
    Mean,
    Max,
}

/// <summary>How neurons are ranked for the k-sparse probes.</summary>
public enum NeuronRankingMethod
{
    MeanDiff,
    AnovaF,
    L1,
    Svm,
    MutualInfo,
    Random,
}

/// <summary>Class weights in a probe's loss.</summary>
public enum ClassWeight
{
    /// <summary>Every row weighs 1.</summary>
    None,

    /// <summary>scikit-learn's <c>class_weight='balanced'</c>: per one-vs-rest problem, n / (2 · count of the row's side).</summary>
    Balanced,
}

/// <summary>How the held-out part is drawn.</summary>
public enum SplitKind
{
    /// <summary>Per class, in proportion (seeded .NET shuffle).</summary>
    Stratified,

    /// <summary>scikit-learn's <c>train_test_split(test_size=holdout, random_state=seed)</c>, not stratified, index for index.</summary>
    Sklearn,
}

/// <summary>The numbers of neurons tried by the k-sparse probes.</summary>
public enum KGrid
{
    /// <summary>1, 2, 4, 8, … and the width.</summary>
    PowersOfTwo,

    /// <summary>Gurnee et al.'s <c>make_k_list</c>: 1–8, 10, 12, then 16·2^i below the width, and the width.</summary>
    Reference,
}

/// <summary>Settings reproducing a published probing setup.</summary>
public enum ProbingPreset
{
    /// <summary>Luckfort/CD ("Concept Depth"): see <see cref="TrainParameters.Preset"/>.</summary>
    ConceptDepth,
}

/// <summary>mode "train" (the default): dense probes per hook, concept depth, k-sparse probes.</summary>
public sealed class TrainParameters : ProbingParameters
{
    /// <summary>The hooks a train run probes unless told otherwise.</summary>
    public static readonly IReadOnlyList<string> DefaultHooks = ["blocks.*.hook_resid_post", "blocks.*.mlp.hook_post"];

    [Description("concept_depth: Luckfort/CD's setup — hooks blocks.*.ln2.hook_normalized, position last, split sklearn with holdout 0.4 and seed 42, "
        + "c 1, class_weight none, standardize false, max_iterations 100, sparse off; those parameters must then be left out")]
    public ProbingPreset? Preset { get; init; }

    [Description("hook names or globs")]
    [MinLength(1)]
    public IReadOnlyList<string> Hooks { get; init; } = DefaultHooks;

    [Description("where in a row the features are read: the last token, the target token, or the mean or max over the row's tokens (padding excluded)")]
    public ProbePosition Position { get; init; } = ProbePosition.Last;

    [Description("held-out fraction (used unless folds is given)")]
    [Range(0.05, 0.9)]
    public double Holdout { get; init; } = 0.25;

    [Description("how the held-out part is drawn: stratified per class, or exactly as scikit-learn's train_test_split(test_size=holdout, random_state=seed) (not stratified)")]
    public SplitKind Split { get; init; } = SplitKind.Stratified;

    [Description("stratified k-fold instead of a holdout")]
    [Range(2, 20)]
    public int? Folds { get; init; }

    [Description("split seed")]
    [Range(0, int.MaxValue)]
    public int Seed { get; init; }

    [Description("a fixed L2 strength instead of choosing from c_grid")]
    [Range(0.000001, double.PositiveInfinity)]
    public double? C { get; init; }

    [Description("class weights of the dense probes (none, or balanced as scikit-learn's class_weight='balanced')")]
    public ClassWeight ClassWeight { get; init; } = ClassWeight.None;

    [Description("z-score features with the training mean and std before fitting (false: raw activations, as scikit-learn without a scaler)")]
    public bool Standardize { get; init; } = true;

    [Description("solver tolerance, as scikit-learn's tol: stop when the largest gradient component of C·Σloss + ½‖w‖² is at most this")]
    [Range(1e-12, 1.0)]
    public double Tolerance { get; init; } = 1e-4;

    [Description("L-BFGS iterations at most per probe (scikit-learn's max_iter)")]
    [Range(1, 100000)]
    public int MaxIterations { get; init; } = 1000;

    [Description("L2 strengths to choose from by 3-fold CV on the training part")]
    [Range(0.000001, double.PositiveInfinity)]
    [MinLength(1)]
    public IReadOnlyList<double> CGrid { get; init; } = [0.01, 0.1, 1, 10];

    [Description("concept depth: the first layer reaching this fraction of the best layer's accuracy")]
    [Range(0.0, 1.0)]
    public double DepthThreshold { get; init; } = 0.9;

    [Description("k-sparse probes (default: on, at the best hook)")]
    public SparseSettings? Sparse { get; init; }

    [Description("save each hook's dense probe as an artifact")]
    public bool SaveProbes { get; init; } = true;

    [Description("artifact prefix of the saved probes (default: probes/<job id>)")]
    public string? SavePrefix { get; init; }
}

/// <summary>k-sparse probing settings.</summary>
public sealed class SparseSettings
{
    [Description("probed hooks to rank neurons at (default: the best hook)")]
    public IReadOnlyList<string>? Hooks { get; init; }

    [Description("neuron rankings, each giving one sweep over k")]
    public IReadOnlyList<NeuronRankingMethod> Rankings { get; init; } =
        [NeuronRankingMethod.MeanDiff, NeuronRankingMethod.AnovaF, NeuronRankingMethod.L1, NeuronRankingMethod.Svm, NeuronRankingMethod.MutualInfo, NeuronRankingMethod.Random];

    [Description("numbers of neurons (default: k_grid)")]
    [Range(1, int.MaxValue)]
    public IReadOnlyList<int>? Ks { get; init; }

    [Description("the ks when ks is not given: powers_of_two (1, 2, 4, … and the width) or reference (Gurnee et al.: 1–8, 10, 12, then 16·2^i, and the width)")]
    public KGrid KGrid { get; init; } = KGrid.PowersOfTwo;

    [Description("class weights of the k-sparse probes (balanced by default, as Gurnee et al.)")]
    public ClassWeight ClassWeight { get; init; } = ClassWeight.Balanced;

    [Description("neurons listed per ranking in the top_neurons table")]
    [Range(1, int.MaxValue)]
    public int TopNeurons { get; init; } = 10;

    [Description("run the k-sparse probes")]
    public bool Enabled { get; init; } = true;
}

/// <summary>mode "apply": run a saved probe on new examples (labels optional: accuracy if given).</summary>
public sealed class ApplyParameters : ProbingParameters
{
    [Description("the saved probe's artifact name")]
    public string? Probe { get; init; }
}

/// <summary>A label as the plugin compares it: a string as is, a number or boolean as its JSON text (<c>1</c>, <c>true</c>).</summary>
internal sealed class LabelConverter : JsonConverter<string>
{
    public override bool HandleNull => false;

    public override string Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.String => reader.GetString()!,
        JsonTokenType.Number or JsonTokenType.True or JsonTokenType.False => Encoding.UTF8.GetString(reader.HasValueSequence ? reader.ValueSequence.ToArray() : reader.ValueSpan),
        _ => throw new JsonException("a label is a string, an integer or a boolean"),
    };

    public override void Write(Utf8JsonWriter writer, string value, JsonSerializerOptions options) => writer.WriteStringValue(value);
}

/// <summary>A list of labels, each read by <see cref="LabelConverter"/>.</summary>
internal sealed class LabelListConverter : JsonConverter<IReadOnlyList<string>>
{
    private static readonly LabelConverter Label = new();

    public override IReadOnlyList<string> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new JsonException("labels is a list");
        var labels = new List<string>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray or JsonTokenType.Null)
                throw new JsonException($"item {labels.Count} is not a string, an integer or a boolean");
            labels.Add(Label.Read(ref reader, typeof(string), options));
        }
        return labels;
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<string> value, JsonSerializerOptions options)
    {
        writer.WriteStartArray();
        foreach (var label in value)
            writer.WriteStringValue(label);
        writer.WriteEndArray();
    }
}
