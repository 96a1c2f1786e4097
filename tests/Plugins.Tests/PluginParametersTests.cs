using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace InterpMesh.Plugins.Tests;

public enum Ranking
{
    MeanDifference,
    Svm,
}

[System.Text.Json.Serialization.JsonPolymorphic(TypeDiscriminatorPropertyName = "mode")]
[System.Text.Json.Serialization.JsonDerivedType(typeof(TrainMode), "train")]
[System.Text.Json.Serialization.JsonDerivedType(typeof(ApplyMode), "apply")]
[DefaultMode("train")]
public abstract class ModalParameters
{
    [Range(1, 64)]
    public int BatchSize { get; init; } = 16;
}

public sealed class TrainMode : ModalParameters
{
    [MinLength(1)]
    public required IReadOnlyList<string> Texts { get; init; }
}

public sealed class ApplyMode : ModalParameters
{
    [Description("the saved probe's artifact name")]
    public required string Probe { get; init; }
}

public sealed class SweepParameters
{
    [Description("hook to read")]
    public required string Hook { get; init; }

    [Description("probe sizes to try")]
    [MinLength(1)]
    public IReadOnlyList<int> KValues { get; init; } = [1, 2, 4];

    [Range(1, 1000)]
    public int Steps { get; init; } = 100;

    public Ranking Ranking { get; init; } = Ranking.MeanDifference;

    public double? Temperature { get; init; }
}

/// <summary>Typed plugin parameters: the schema the gateway validates with, and the parse a run receives.</summary>
public sealed class PluginParametersTests
{
    private static JsonElement Json(string text) => JsonDocument.Parse(text).RootElement;

    [Fact]
    public void The_schema_names_types_defaults_descriptions_and_limits()
    {
        var schema = PluginParameters.SchemaOf<SweepParameters>();
        Assert.Equal("object", schema["type"]!.GetValue<string>());
        Assert.False(schema["additionalProperties"]!.GetValue<bool>());
        Assert.Equal(["hook"], schema["required"]!.AsArray().Select(r => r!.GetValue<string>()));
        var p = schema["properties"]!.AsObject();
        Assert.Equal(["hook", "k_values", "steps", "ranking", "temperature"], p.Select(kv => kv.Key));
        Assert.Equal("hook to read", p["hook"]!["description"]!.GetValue<string>());
        Assert.Equal("[1,2,4]", p["k_values"]!["default"]!.ToJsonString());
        Assert.Equal(1, p["k_values"]!["minItems"]!.GetValue<int>());
        Assert.Equal(100, p["steps"]!["default"]!.GetValue<int>());
        Assert.Equal(1, p["steps"]!["minimum"]!.GetValue<double>());
        Assert.Equal(1000, p["steps"]!["maximum"]!.GetValue<double>());
        Assert.Equal(["mean_difference", "svm"], p["ranking"]!["enum"]!.AsArray().Select(e => e!.GetValue<string>()));
        Assert.Equal("\"mean_difference\"", p["ranking"]!["default"]!.ToJsonString());
        Assert.Contains("null", p["temperature"]!["type"]!.ToJsonString(), StringComparison.Ordinal);
    }

    [Fact]
    public void The_gateway_validator_reads_the_generated_schema()
    {
        var schema = PluginParameters.SchemaOf<SweepParameters>();
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json("""{"hook": "blocks.0.hook_resid_post", "ranking": "svm"}""")));
        Assert.Equal(
            [
                "parameters.hook is required",
                "parameters.steps: 0 is below the minimum 1",
                "parameters.ranking: \"rbf\" is not one of [\"mean_difference\",\"svm\"]",
                "parameters.colour is not a known parameter; known: hook, k_values, steps, ranking, temperature",
            ],
            InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json("""{"steps": 0, "ranking": "rbf", "colour": 1}""")));
    }

    [Fact]
    public void Parsing_fills_defaults_and_reads_snake_case()
    {
        var p = PluginParameters.Parse<SweepParameters>(Json("""{"hook": "blocks.1.hook_z", "k_values": [8], "ranking": "svm", "temperature": 0.5}"""));
        Assert.Equal("blocks.1.hook_z", p.Hook);
        Assert.Equal([8], p.KValues);
        Assert.Equal(100, p.Steps);
        Assert.Equal(Ranking.Svm, p.Ranking);
        Assert.Equal(0.5, p.Temperature);
    }

    [Theory]
    [InlineData("""{"k_values": [1]}""", "parameters.hook is required", "")]
    [InlineData("""{"hook": "h", "steps": "many"}""", "parameters.steps: has the wrong type", "")]
    [InlineData("""{"hook": "h", "colour": 1}""", "parameters.colour is not a known parameter; known: hook, k_values, steps, ranking, temperature", "")]
    [InlineData("""{"hook": "h", "steps": 5000}""", "parameters.steps: 5000 is above the maximum 1000", "")]
    [InlineData("""{"hook": "h", "k_values": []}""", "parameters.k_values: has 0 items, needs at least 1", "")]
    [InlineData("""{"hook": "h", "ranking": "rbf"}""", "parameters.ranking: ", "")]
    public void Parameters_that_do_not_fit_name_the_property(string json, string start, string mentions)
    {
        var e = Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<SweepParameters>(Json(json)));
        Assert.StartsWith(start, e.Message, StringComparison.Ordinal);
        Assert.Contains(mentions, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("InterpMesh.", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"analyses": ["bogus"]}""", "parameters.analyses[0]: \"bogus\" is not one of [\"retrieval\",\"detector\",\"ablation\"]")]
    [InlineData("""{"trials_per_cell": 0}""", "parameters.trials_per_cell: 0 is below the minimum 1")]
    [InlineData("""{"recall_threshold": 1.5}""", "parameters.recall_threshold: 1.5 is above the maximum 1")]
    [InlineData("""{"synthetic": {"separator": ["a", "b"]}}""", "parameters.synthetic.separator: has 2 items, at most 1 allowed")]
    [InlineData("""{"text": {"needle": "x"}}""", "parameters.text.question is required")]
    [InlineData("""{"detector": {"length": 1}}""", "parameters.detector.length: 1 is below the minimum 2")]
    [InlineData("""{"detector": {"colour": 1}}""", "parameters.detector.colour is not a known parameter")]
    public void A_built_in_plugins_generated_schema_keeps_its_limits(string json, string message)
    {
        var schema = new InterpMesh.Plugins.RetrievalHeads.RetrievalHeadsPlugin().Manifest.ParameterSchema;
        var errors = InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(json));
        Assert.True(errors.Any(e => e.StartsWith(message, StringComparison.Ordinal)), $"expected '{message}', got: {string.Join(" | ", errors)}");
        // The parse (for direct callers) refuses the same input.
        Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.RetrievalHeads.RetrievalHeadsParameters>(Json(json)));
    }

    [Fact]
    public void A_built_in_plugins_defaults_are_in_its_schema()
    {
        var p = new InterpMesh.Plugins.RetrievalHeads.RetrievalHeadsPlugin().Manifest.ParameterSchema["properties"]!;
        Assert.Equal("[\"retrieval\",\"detector\",\"ablation\"]", p["analyses"]!["default"]!.ToJsonString());
        Assert.Equal(2, p["trials_per_cell"]!["default"]!.GetValue<int>());
        Assert.Equal(0.5, p["recall_threshold"]!["default"]!.GetValue<double>());
        Assert.True(p["save_trials"]!["default"]!.GetValue<bool>());
        Assert.Null(p["trials_per_cell"]!["maximum"]);
    }

    [Fact]
    public void Modes_are_forms_of_one_schema_and_the_default_mode_needs_no_mode()
    {
        var schema = PluginParameters.SchemaOf<ModalParameters>();
        var forms = schema["anyOf"]!.AsArray().Select(f => f!.AsObject()).ToList();
        Assert.Equal(["train", "apply"], forms.Select(f => f["properties"]!["mode"]!["const"]!.GetValue<string>()));
        Assert.DoesNotContain("mode", forms[0]["required"]!.AsArray().Select(r => r!.GetValue<string>()));
        Assert.Contains("mode", forms[1]["required"]!.AsArray().Select(r => r!.GetValue<string>()));
        Assert.Equal("train", forms[0]["properties"]!["mode"]!["default"]!.GetValue<string>());

        // What the gateway says before the run …
        List<string> Check(string json) => InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(json));
        Assert.Empty(Check("""{"texts": ["a"]}"""));
        Assert.Empty(Check("""{"batch_size": 8, "mode": "apply", "probe": "probes/x"}"""));
        Assert.Equal(["parameters.probe is required"], Check("""{"mode": "apply"}"""));
        Assert.Equal(["parameters.texts: has 0 items, needs at least 1"], Check("""{"texts": []}"""));
        Assert.Contains(Check("""{"mode": "apply", "probe": "p", "texts": ["a"]}"""), e => e.StartsWith("parameters.texts is not a known parameter", StringComparison.Ordinal));
        Assert.Equal(["parameters.mode: must be one of [\"train\",\"apply\"]"], Check("""{"mode": "fit"}"""));

        // … and what a run receives.
        var train = Assert.IsType<TrainMode>(PluginParameters.Parse<ModalParameters>(Json("""{"texts": ["a", "b"]}""")));
        Assert.Equal(["a", "b"], train.Texts);
        Assert.Equal(16, train.BatchSize);
        var apply = Assert.IsType<ApplyMode>(PluginParameters.Parse<ModalParameters>(Json("""{"batch_size": 4, "probe": "probes/x", "mode": "apply"}""")));
        Assert.Equal(("probes/x", 4), (apply.Probe, apply.BatchSize));
        Assert.StartsWith("parameters.batch_size: 100 is above the maximum 64",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<ModalParameters>(Json("""{"texts": ["a"], "batch_size": 100}"""))).Message, StringComparison.Ordinal);
        Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<ModalParameters>(Json("""{"mode": "fit"}""")));
    }

    [Theory]
    [InlineData("""{"positive": ["a"], "negative": ["b"], "vector": "v"}""", "parameters.vector is not a known parameter")]
    [InlineData("""{"mode": "apply", "vector": "v", "positive": ["a"]}""", "parameters.positive is not a known parameter")]
    [InlineData("""{"mode": "apply", "vector": "v", "coefficients": []}""", "parameters.coefficients: has 0 items, needs at least 1")]
    [InlineData("""{"mode": "apply", "positions": "middle"}""", "parameters.positions: \"middle\" is not one of [\"all\",\"prompt\",\"generated\"]")]
    [InlineData("""{"mode": "function_vector", "top_heads": 0}""", "parameters.top_heads: 0 is below the minimum 1")]
    [InlineData("""{"mode": "steer"}""", "parameters.mode: must be one of [\"extract\",\"apply\",\"function_vector\"]")]
    public void The_steering_modes_refuse_each_others_parameters(string json, string message)
    {
        var schema = new InterpMesh.Plugins.Steering.SteeringPlugin().Manifest.ParameterSchema;
        var errors = InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(json));
        Assert.True(errors.Any(e => e.StartsWith(message, StringComparison.Ordinal)), $"expected '{message}', got: {string.Join(" | ", errors)}");
        Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Steering.SteeringParameters>(Json(json)));
    }

    [Fact]
    public void Steering_parameters_without_a_mode_are_an_extraction()
    {
        var p = PluginParameters.Parse<InterpMesh.Plugins.Steering.SteeringParameters>(Json("""{"positive": ["a"], "negative": ["b"], "save_as": "v", "layers": [0]}"""));
        var extract = Assert.IsType<InterpMesh.Plugins.Steering.ExtractParameters>(p);
        Assert.Equal(("v", 32), (extract.SaveAs, extract.BatchSize));
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(new InterpMesh.Plugins.Steering.SteeringPlugin().Manifest.ParameterSchema,
            Json("""{"positive": ["a"], "negative": ["b"], "save_as": "v", "layers": [0]}""")));
    }
}
