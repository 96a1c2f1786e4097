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

    [Range(1, 256)]
    public int BatchSize { get; init; } = 16;
}

/// <summary>One labelled example given inline (members other than these are ignored, as in a JSONL dataset).</summary>
[JsonUnmappedMemberHandling(JsonUnmappedMemberHandling.Skip)]
public sealed class ProbingRowParameters
{
    public required string Text { get; init; }

    [Description("a string, an integer or a boolean")]
    [JsonConverter(typeof(LabelConverter))]
    [ParameterSchema("""{"type": ["string", "integer", "boolean"]}""")]
    public string? Label { get; init; }

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
}

/// <summary>How neurons are ranked for the k-sparse probes.</summary>
public enum NeuronRankingMethod
{
    MeanDiff,
    AnovaF,
    L1,
    MutualInfo,
    Random,
}

/// <summary>mode "train" (the default): dense probes per hook, concept depth, k-sparse probes.</summary>
public sealed class TrainParameters : ProbingParameters
{
    [Description("hook names or globs")]
    [MinLength(1)]
    public IReadOnlyList<string> Hooks { get; init; } = ["blocks.*.hook_resid_post", "blocks.*.mlp.hook_post"];

    public ProbePosition Position { get; init; } = ProbePosition.Last;

    [Description("stratified held-out fraction (used unless folds is given)")]
    [Range(0.05, 0.9)]
    public double Holdout { get; init; } = 0.25;

    [Description("stratified k-fold instead of a holdout")]
    [Range(2, 20)]
    public int? Folds { get; init; }

    [Description("split seed")]
    public int Seed { get; init; }

    [Description("a fixed L2 strength instead of choosing from c_grid")]
    [Range(0.000001, double.PositiveInfinity)]
    public double? C { get; init; }

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

    public IReadOnlyList<NeuronRankingMethod> Rankings { get; init; } =
        [NeuronRankingMethod.MeanDiff, NeuronRankingMethod.AnovaF, NeuronRankingMethod.L1, NeuronRankingMethod.MutualInfo, NeuronRankingMethod.Random];

    [Description("numbers of neurons (default: 1, 2, 4, … up to the width)")]
    [Range(1, int.MaxValue)]
    public IReadOnlyList<int>? Ks { get; init; }

    [Range(1, int.MaxValue)]
    public int TopNeurons { get; init; } = 10;

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
