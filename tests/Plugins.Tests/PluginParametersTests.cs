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

public sealed class Point
{
    [Range(0, 10)]
    public int X { get; init; }

    [MinLength(2), MaxLength(2)]
    public IReadOnlyList<int>? Span { get; init; }
}

/// <summary>A label read by its own converter: a string, or a number or boolean as its JSON text.</summary>
public sealed class TextOrNumber : System.Text.Json.Serialization.JsonConverter<string>
{
    public override string Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.String => reader.GetString()!,
        JsonTokenType.Number => System.Text.Encoding.UTF8.GetString(reader.ValueSpan),
        _ => throw new JsonException("a string or a number"),
    };

    public override void Write(Utf8JsonWriter writer, string value, JsonSerializerOptions options) => writer.WriteStringValue(value);
}

public sealed class ListParameters
{
    [Range(1, 100)]
    public IReadOnlyList<int> Ks { get; init; } = [1, 2];

    public IReadOnlyList<Point>? Points { get; init; }

    [System.Text.Json.Serialization.JsonConverter(typeof(TextOrNumber))]
    [ParameterSchema("""{"type": ["string", "number"]}""")]
    [Description("a name or a number")]
    public string? Label { get; init; }
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

    [Fact]
    public void Mode_forms_carry_their_defaults_also_those_of_the_abstract_base_and_of_nested_classes()
    {
        var forms = PluginParameters.SchemaOf<ModalParameters>()["anyOf"]!.AsArray();
        Assert.All(forms, f => Assert.Equal(16, f!["properties"]!["batch_size"]!["default"]!.GetValue<int>()));
        var steering = new InterpMesh.Plugins.Steering.SteeringPlugin().Manifest.ParameterSchema["anyOf"]!.AsArray();
        Assert.Equal(32, steering[0]!["properties"]!["batch_size"]!["default"]!.GetValue<int>());
        Assert.Equal("[0,1,2,4]", steering[1]!["properties"]!["coefficients"]!["default"]!.ToJsonString());
        var detector = new InterpMesh.Plugins.RetrievalHeads.RetrievalHeadsPlugin().Manifest.ParameterSchema["properties"]!["detector"]!;
        Assert.Equal(16, detector["properties"]!["prompts"]!["default"]!.GetValue<int>());
    }

    [Fact]
    public void A_range_on_a_list_limits_its_items_and_objects_in_lists_are_checked()
    {
        var schema = PluginParameters.SchemaOf<ListParameters>();
        var ks = schema["properties"]!["ks"]!;
        Assert.Equal(1, ks["items"]!["minimum"]!.GetValue<double>());
        Assert.Equal(100, ks["items"]!["maximum"]!.GetValue<double>());
        Assert.Null(ks["minimum"]);
        Assert.Equal(["parameters.ks[1]: 0 is below the minimum 1"], InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json("""{"ks": [3, 0]}""")));
        Assert.StartsWith("parameters.ks[1]: 0 is below the minimum 1",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<ListParameters>(Json("""{"ks": [3, 0]}"""))).Message, StringComparison.Ordinal);
        Assert.StartsWith("parameters.points[1].x: 11 is above the maximum 10",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<ListParameters>(Json("""{"points": [{"x": 1}, {"x": 11}]}"""))).Message, StringComparison.Ordinal);
        Assert.StartsWith("parameters.points[0].span: has 3 items, at most 2 allowed",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<ListParameters>(Json("""{"points": [{"span": [1, 2, 3]}]}"""))).Message, StringComparison.Ordinal);
        Assert.Equal([1, 2], PluginParameters.Parse<ListParameters>(Json("""{"points": [{"span": [1, 2]}]}""")).Points![0].Span);
    }

    [Fact]
    public void A_member_read_by_its_own_converter_states_its_schema()
    {
        var schema = PluginParameters.SchemaOf<ListParameters>();
        var label = schema["properties"]!["label"]!;
        Assert.Equal("""["string","number"]""", label["type"]!.ToJsonString());
        Assert.Equal("a name or a number", label["description"]!.GetValue<string>());
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json("""{"label": 2}""")));
        Assert.Equal(["parameters.label: expected string or number, got boolean true"], InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json("""{"label": true}""")));
        Assert.Equal("2.50", PluginParameters.Parse<ListParameters>(Json("""{"label": 2.50}""")).Label);
        Assert.StartsWith("parameters.label: a string or a number",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<ListParameters>(Json("""{"label": true}"""))).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"texts": ["a"], "labels": ["x"], "probe": "p"}""", "parameters.probe is not a known parameter")]
    [InlineData("""{"mode": "apply", "probe": "p", "texts": ["a"], "hooks": ["blocks.0.hook_resid_post"]}""", "parameters.hooks is not a known parameter")]
    [InlineData("""{"mode": "apply", "probe": "p", "texts": ["a"], "sparse": {"ks": [1]}}""", "parameters.sparse is not a known parameter")]
    [InlineData("""{"mode": "apply", "probe": "p", "texts": ["a"], "save_prefix": "x"}""", "parameters.save_prefix is not a known parameter")]
    [InlineData("""{"mode": "apply", "probe": "p", "rows": [{"label": "a"}]}""", "parameters.rows[0].text is required")]
    [InlineData("""{"texts": ["a"], "colour": 1}""", "parameters.colour is not a known parameter")]
    [InlineData("""{"texts": ["a"], "labels": [{"x": 1}]}""", "parameters.labels[0]: expected string or integer or boolean, got object")]
    [InlineData("""{"texts": ["a"], "sparse": {"ks": [4, 0]}}""", "parameters.sparse.ks[1]: 0 is below the minimum 1")]
    [InlineData("""{"texts": ["a"], "sparse": {"rankings": ["lasso"]}}""", "parameters.sparse.rankings[0]: \"lasso\" is not one of [\"mean_diff\",\"anova_f\",\"l1\",\"svm\",\"mutual_info\",\"random\"]")]
    [InlineData("""{"texts": ["a"], "sparse": {"k_grid": "gurnee"}}""", "parameters.sparse.k_grid: \"gurnee\" is not one of [\"powers_of_two\",\"reference\"]")]
    [InlineData("""{"texts": ["a"], "sparse": {"class_weight": "auto"}}""", "parameters.sparse.class_weight: \"auto\" is not one of [\"none\",\"balanced\"]")]
    [InlineData("""{"texts": ["a"], "split": "shuffle"}""", "parameters.split: \"shuffle\" is not one of [\"stratified\",\"sklearn\"]")]
    [InlineData("""{"texts": ["a"], "preset": "cd"}""", "parameters.preset: \"cd\" is not one of")]
    [InlineData("""{"texts": ["a"], "position": "min"}""", "parameters.position: \"min\" is not one of [\"last\",\"target\",\"mean\",\"max\"]")]
    [InlineData("""{"texts": ["a"], "tolerance": 0}""", "parameters.tolerance: 0 is below the minimum")]
    [InlineData("""{"texts": ["a"], "max_iterations": 0}""", "parameters.max_iterations: 0 is below the minimum 1")]
    [InlineData("""{"texts": ["a"], "seed": -1}""", "parameters.seed: -1 is below the minimum 0")]
    [InlineData("""{"texts": ["a"], "c_grid": [1, 0]}""", "parameters.c_grid[1]: 0 is below the minimum")]
    [InlineData("""{"texts": ["a"], "holdout": 0.95}""", "parameters.holdout: 0.95 is above the maximum 0.9")]
    [InlineData("""{"rows": [{"text": "a", "target_span": [1]}]}""", "parameters.rows[0].target_span: has 1 items, needs at least 2")]
    [InlineData("""{"mode": "probe"}""", "parameters.mode: must be one of [\"train\",\"apply\"]")]
    public void The_probing_modes_refuse_each_others_parameters(string json, string message)
    {
        var schema = new InterpMesh.Plugins.Probing.ProbingPlugin().Manifest.ParameterSchema;
        var errors = InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(json));
        Assert.True(errors.Any(e => e.StartsWith(message, StringComparison.Ordinal)), $"expected '{message}', got: {string.Join(" | ", errors)}");
        Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json(json)));
    }

    [Fact]
    public void Probing_labels_may_be_strings_integers_or_booleans_and_rows_may_carry_other_members()
    {
        var schema = new InterpMesh.Plugins.Probing.ProbingPlugin().Manifest.ParameterSchema;
        const string texts = """{"texts": ["a", "b", "c"], "labels": ["x", 1, true], "target_indices": [0, 1, 2]}""";
        const string rows = """{"mode": "apply", "probe": "p", "rows": [{"text": "a", "label": 0, "id": 7}, {"text": "b", "label": false, "target_span": [0, 1]}, {"text": "c"}]}""";
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(texts)));
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(rows)));

        var train = Assert.IsType<InterpMesh.Plugins.Probing.TrainParameters>(PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json(texts)));
        Assert.Equal(["x", "1", "true"], train.Labels);
        Assert.Equal([0, 1, 2], train.TargetIndices);
        var apply = Assert.IsType<InterpMesh.Plugins.Probing.ApplyParameters>(PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json(rows)));
        Assert.Equal(["0", "false", null], apply.Rows!.Select(r => r.Label));
        Assert.Equal([0, 1], apply.Rows![1].TargetSpan);
        Assert.Equal(("p", 16), (apply.Probe, apply.BatchSize));
        Assert.StartsWith("parameters.labels: item 1 is not a string, an integer or a boolean",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json("""{"texts": ["a", "b"], "labels": ["x", [1]]}"""))).Message, StringComparison.Ordinal);
        Assert.Equal("parameters.hooks is not a known parameter; known: mode, probe, rows, texts, labels, target_indices, dataset, batch_size",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json("""{"mode": "apply", "probe": "p", "texts": ["a"], "hooks": ["h"]}"""))).Message);
        Assert.Equal("parameters.rows[1].text is required",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json("""{"rows": [{"text": "a"}, {"label": 1}]}"""))).Message);
        Assert.Equal("parameters.sparse.colour is not a known parameter",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json("""{"texts": ["a"], "sparse": {"colour": 1}}"""))).Message);
        Assert.StartsWith("parameters.rows[0].label: a label is a string, an integer or a boolean",
            Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.Probing.ProbingParameters>(Json("""{"rows": [{"text": "a", "label": {"x": 1}}]}"""))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_probing_schema_carries_defaults_descriptions_and_enums()
    {
        var schema = new InterpMesh.Plugins.Probing.ProbingPlugin().Manifest.ParameterSchema;
        Assert.DoesNotContain("$ref", schema.ToJsonString(), StringComparison.Ordinal);
        var forms = schema["anyOf"]!.AsArray().Select(f => f!["properties"]!).ToList();
        Assert.Equal(["train", "apply"], forms.Select(f => f["mode"]!["const"]!.GetValue<string>()));
        var train = forms[0];
        Assert.Equal(0.25, train["holdout"]!["default"]!.GetValue<double>());
        Assert.Equal("[0.01,0.1,1,10]", train["c_grid"]!["default"]!.ToJsonString());
        Assert.Equal("""["blocks.*.hook_resid_post","blocks.*.mlp.hook_post"]""", train["hooks"]!["default"]!.ToJsonString());
        Assert.Equal("""["last","target","mean","max"]""", train["position"]!["enum"]!.ToJsonString());
        Assert.Equal("stratified", train["split"]!["default"]!.GetValue<string>());
        Assert.Equal("none", train["class_weight"]!["default"]!.GetValue<string>());
        Assert.Equal("balanced", train["sparse"]!["properties"]!["class_weight"]!["default"]!.GetValue<string>());
        Assert.Equal("powers_of_two", train["sparse"]!["properties"]!["k_grid"]!["default"]!.GetValue<string>());
        Assert.Equal(1e-4, train["tolerance"]!["default"]!.GetValue<double>());
        Assert.Equal(1000, train["max_iterations"]!["default"]!.GetValue<int>());
        Assert.True(train["standardize"]!["default"]!.GetValue<bool>());
        // Every train parameter (and every sparse setting) says what it is.
        foreach (var (name, node) in train.AsObject().Where(kv => kv.Key != "mode").Concat(train["sparse"]!["properties"]!.AsObject()))
            Assert.False(string.IsNullOrEmpty(node!["description"]?.GetValue<string>()), $"{name} has no description");
        Assert.Equal("last", train["position"]!["default"]!.GetValue<string>());
        Assert.Equal(10, train["sparse"]!["properties"]!["top_neurons"]!["default"]!.GetValue<int>());
        Assert.Equal(16, forms[1]["batch_size"]!["default"]!.GetValue<int>());
        Assert.Equal("the saved probe's artifact name", forms[1]["probe"]!["description"]!.GetValue<string>());
        Assert.Equal("""["string","integer","boolean"]""", forms[1]["rows"]!["items"]!["properties"]!["label"]!["type"]!.ToJsonString());
    }

    [Theory]
    [InlineData("""{"hook": "blocks.0.hook_resid_post", "texts": ["a"], "sae": "saes/x"}""", "parameters.sae is not a known parameter")]
    [InlineData("""{"hook": "blocks.0.hook_resid_post", "texts": ["a"], "feature": 3}""", "parameters.feature is not a known parameter")]
    [InlineData("""{"mode": "evaluate", "sae": "saes/x", "texts": ["a"], "steps": 10}""", "parameters.steps is not a known parameter")]
    [InlineData("""{"mode": "evaluate", "sae": "saes/x", "generate": {"prompts": ["a"]}}""", "parameters.generate is not a known parameter")]
    [InlineData("""{"mode": "inspect", "sae": "saes/x", "texts": ["a"], "save_as": "v"}""", "parameters.save_as is not a known parameter")]
    [InlineData("""{"mode": "export_direction", "sae": "saes/x", "feature": 1, "texts": ["a"]}""", "parameters.texts is not a known parameter")]
    [InlineData("""{"mode": "export_direction", "sae": "saes/x", "feature": 1, "top": 3}""", "parameters.top is not a known parameter")]
    [InlineData("""{"hook": "h", "texts": ["a"], "colour": 1}""", "parameters.colour is not a known parameter")]
    [InlineData("""{"hook": "h", "texts": ["a"], "architecture": "gated"}""", "parameters.architecture: \"gated\" is not one of [\"standard\",\"topk\"]")]
    [InlineData("""{"hook": "h", "texts": ["a"], "steps": 0}""", "parameters.steps: 0 is below the minimum 1")]
    [InlineData("""{"hook": "h", "generate": {"samples_per_prompt": 2}}""", "parameters.generate.prompts is required")]
    [InlineData("""{"mode": "inspect", "sae": "saes/x", "texts": ["a"], "feature": -1}""", "parameters.feature: -1 is below the minimum 0")]
    [InlineData("""{"mode": "sweep"}""", "parameters.mode: must be one of [\"train\",\"evaluate\",\"inspect\",\"export_direction\"]")]
    public void The_sae_modes_refuse_each_others_parameters(string json, string message)
    {
        var schema = new InterpMesh.Plugins.SAE.SaePlugin().Manifest.ParameterSchema;
        var errors = InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(json));
        Assert.True(errors.Any(e => e.StartsWith(message, StringComparison.Ordinal)), $"expected '{message}', got: {string.Join(" | ", errors)}");
        Assert.Throws<InvalidParametersException>(() => PluginParameters.Parse<InterpMesh.Plugins.SAE.SaeParameters>(Json(json)));
    }

    [Fact]
    public void Sae_parameters_keep_todays_names_and_values()
    {
        var schema = new InterpMesh.Plugins.SAE.SaePlugin().Manifest.ParameterSchema;
        const string train = """{"hook": "blocks.0.hook_resid_post", "generate": {"prompts": ["the"], "temperature": 0.7}, "architecture": "standard", "d_sae": 96, "l1_coefficient": 2, "normalize": "expected_average_only_in", "checkpoint_every": 50, "save_as": "saes/a"}""";
        const string inspect = """{"mode": "inspect", "sae": "saes/a", "dataset": "data/t", "feature": 3, "top": 2}""";
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(train)));
        Assert.Empty(InterpMesh.Gateway.Plugins.ParameterValidator.Validate(schema, Json(inspect)));

        var t = Assert.IsType<InterpMesh.Plugins.SAE.TrainParameters>(PluginParameters.Parse<InterpMesh.Plugins.SAE.SaeParameters>(Json(train)));
        Assert.Equal((InterpMesh.Plugins.SAE.SaeArchitecture.Standard, 96, 2.0, InterpMesh.Plugins.SAE.SaeNormalization.ExpectedAverageOnlyIn, 50, 500),
            (t.Architecture, t.DSae, t.L1Coefficient, t.Normalize, t.CheckpointEvery, t.Steps));
        Assert.Equal(["the"], t.Generate!.Prompts);
        Assert.Equal((4, 32, 0.7), (t.Generate.SamplesPerPrompt, t.Generate.MaxNewTokens, t.Generate.Temperature));
        var i = Assert.IsType<InterpMesh.Plugins.SAE.InspectParameters>(PluginParameters.Parse<InterpMesh.Plugins.SAE.SaeParameters>(Json(inspect)));
        Assert.Equal(("saes/a", "data/t", 3, 2), (i.Sae, i.Dataset, i.Feature, i.Top));
        Assert.Equal(InterpMesh.Plugins.SAE.SaeArchitecture.TopK,
            Assert.IsType<InterpMesh.Plugins.SAE.TrainParameters>(PluginParameters.Parse<InterpMesh.Plugins.SAE.SaeParameters>(Json("""{"hook": "h", "texts": ["a"], "architecture": "topk"}"""))).Architecture);
    }

    [Fact]
    public void The_sae_schema_carries_defaults_descriptions_and_enums()
    {
        var forms = new InterpMesh.Plugins.SAE.SaePlugin().Manifest.ParameterSchema["anyOf"]!.AsArray().Select(f => f!["properties"]!).ToList();
        Assert.Equal(["train", "evaluate", "inspect", "export_direction"], forms.Select(f => f["mode"]!["const"]!.GetValue<string>()));
        var train = forms[0];
        Assert.Equal("""["standard","topk"]""", train["architecture"]!["enum"]!.ToJsonString());
        Assert.Equal("topk", train["architecture"]!["default"]!.GetValue<string>());
        Assert.Equal("""["none","expected_average_only_in"]""", train["normalize"]!["enum"]!.ToJsonString());
        Assert.Equal(500, train["steps"]!["default"]!.GetValue<int>());
        Assert.Equal(256, train["batch_tokens"]!["default"]!.GetValue<int>());
        Assert.Equal(5.0, train["l1_coefficient"]!["default"]!.GetValue<double>());
        Assert.Equal(4, train["generate"]!["properties"]!["samples_per_prompt"]!["default"]!.GetValue<int>());
        Assert.Equal("latents (default: 4 × the hook's width)", train["d_sae"]!["description"]!.GetValue<string>());
        Assert.Equal(5, forms[2]["top"]!["default"]!.GetValue<int>());
        Assert.Equal(0, forms[3]["feature"]!["minimum"]!.GetValue<double>());
    }
}
