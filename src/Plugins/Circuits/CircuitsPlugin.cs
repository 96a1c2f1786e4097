using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using TorchSharp;

namespace InterpMesh.Plugins.Circuits;

/// <summary>
/// Which components cause a behaviour, from clean/corrupted prompt pairs: activation patching,
/// path patching, attribution patching, the logit lens and direct logit attribution (TransformerLens'
/// patching.py and ActivationCache, the IOI paper, Nanda's attribution patching). Definitions:
/// docs/plugins/circuits.md.
/// </summary>
public sealed class CircuitsPlugin() : AnalysisPlugin<CircuitsParameters>(
    id: "circuits",
    version: "1.0.0",
    description: "Circuit analyses over clean/corrupted prompt pairs: activation patching (residual, attention, MLP, heads, q/k/v, patterns), path patching, attribution patching, logit lens and direct logit attribution.",
    produces: ["table:effects", "table:path_effects", "table:attributions", "table:logit_lens", "table:dla", "table:per_pair", "figure:heatmap", "artifact:effects"])
{
    protected override async Task<PluginResult> RunAsync(CircuitsParameters parameters, IAnalysisContext context)
    {
        var report = new Report();
        string mode;
        switch (parameters)
        {
            case LogitLensParameters lens:
                mode = "logit_lens";
                await LogitLens.RunAsync(lens, context, report);
                break;
            case DirectLogitAttributionParameters dla:
                mode = "direct_logit_attribution";
                await DirectLogitAttribution.RunAsync(dla, context, report);
                break;
            case PathPatchingParameters path:
                mode = "path_patching";
                await PathPatching.RunAsync(path, context, report);
                break;
            case AttributionPatchingParameters atp:
                mode = "attribution_patching";
                await AttributionPatching.RunAsync(atp, context, report);
                break;
            case ActivationPatchingParameters ap:
                mode = "activation_patching";
                await ActivationPatching.RunAsync(ap, context, report);
                break;
            default:
                throw new InvalidParametersException("mode must be activation_patching, path_patching, attribution_patching, logit_lens or direct_logit_attribution");
        }
        string name = parameters.SaveAs ?? $"circuits/{context.JobId}";
        var artifacts = new List<string>();
        if (report.Tensors.Count > 0)
        {
            var tensors = report.Tensors.ToDictionary(t => t.Key, t => torch.tensor(t.Value.Data, t.Value.Shape));
            var metadata = new JsonObject
            {
                ["kind"] = "interpmesh.circuits",
                ["mode"] = mode,
                ["model"] = context.Model.Name,
                ["metric"] = Snake(parameters.Metric.ToString()),
                ["direction"] = Snake(parameters.Direction.ToString()),
                ["tensors"] = report.TensorNotes.DeepClone(),
            };
            await context.Artifacts.SaveTensorsAndDisposeAsync(name, tensors, metadata, context.Cancellation);
            artifacts.Add(name);
            report.Summary["artifact"] = name;
        }
        report.Summary["mode"] = mode;
        report.Summary["model"] = context.Model.Name;
        context.ReportProgress(1, "done");
        return new PluginResult { Summary = report.Summary, Tables = report.Tables, Figures = report.Figures, Artifacts = artifacts };
    }

    internal static string Snake(string pascal) => System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(pascal);
}

/// <summary>What a mode hands back: summary, tables, figures and the tensors to save.</summary>
internal sealed class Report
{
    public JsonObject Summary { get; } = [];

    public List<ResultTable> Tables { get; } = [];

    public List<ResultFigure> Figures { get; } = [];

    public Dictionary<string, Act> Tensors { get; } = new(StringComparer.Ordinal);

    /// <summary>Per saved tensor, what its axes are.</summary>
    public JsonObject TensorNotes { get; } = [];

    public void Tensor(string name, float[] data, long[] shape, string axes)
    {
        Tensors[name] = new Act(data, shape);
        TensorNotes[name] = axes;
    }

    /// <summary>A heatmap (white = 0, dark blue = the largest |value|; negative values show white, their numbers are in the cell titles).</summary>
    public void Heatmap(string name, string title, IReadOnlyList<string> rows, IReadOnlyList<string> columns, double[,] values, string rowAxis, string columnAxis, string caption)
    {
        double max = 0;
        foreach (var v in values)
        {
            if (double.IsFinite(v))
                max = Math.Max(max, Math.Abs(v));
        }
        string svg = Plugins.Figures.Matrix(title, rows, columns, values, max > 0 ? max : 1, rowAxis, columnAxis);
        Figures.Add(new ResultFigure { Name = name, MediaType = "image/svg+xml", Content = Encoding.UTF8.GetBytes(svg), Caption = caption });
    }

    public void Metrics(CircuitMetric metric, PatchDirection direction, Baseline baseline, int pairs)
    {
        Summary["metric"] = CircuitsPlugin.Snake(metric.ToString());
        Summary["direction"] = CircuitsPlugin.Snake(direction.ToString());
        Summary["pairs"] = pairs;
        Summary["clean_metric"] = baseline.CleanMean;
        Summary["corrupted_metric"] = baseline.CorruptMean;
        Tables.Add(new ResultTable
        {
            Name = "per_pair",
            Columns = ["pair", "clean_metric", "corrupted_metric"],
            Rows = [.. baseline.Clean.Select((c, i) => (IReadOnlyList<JsonNode?>)[i, c, baseline.Corrupt[i]])],
        });
    }
}

/// <summary>Checks shared by the modes.</summary>
internal static class Check
{
    public static List<int> Layers(IReadOnlyList<int>? layers, Contracts.V1.ModelInfo info, string field = "layers")
    {
        if (layers is null)
            return [.. Enumerable.Range(0, info.NLayers)];
        if (layers.Count == 0)
            throw new InvalidParametersException($"{field} is empty; leave it out for every layer");
        for (int i = 0; i < layers.Count; i++)
        {
            if (layers[i] < 0 || layers[i] >= info.NLayers)
                throw new InvalidParametersException($"{field}[{i}]: layer {layers[i]} is out of range; this model has layers 0..{info.NLayers - 1}");
        }
        return [.. layers.Distinct().Order()];
    }

    public static (int Layer, int Head) Head(HeadRef? head, Contracts.V1.ModelInfo info, string field)
    {
        if (head is null)
            throw new InvalidParametersException($"{field} is null; give {{\"layer\": L, \"head\": H}}");
        if (head.Layer < 0 || head.Layer >= info.NLayers)
            throw new InvalidParametersException($"{field}.layer: {head.Layer} is out of range; this model has layers 0..{info.NLayers - 1}");
        if (head.Head < 0 || head.Head >= info.NHeads)
            throw new InvalidParametersException($"{field}.head: {head.Head} is out of range; this model has heads 0..{info.NHeads - 1}");
        return (head.Layer, head.Head);
    }

    /// <summary>Labels "pos:token" for a clean prompt's positions.</summary>
    public static async Task<List<string>> PositionLabelsAsync(IModelClient model, int[] tokens, CancellationToken ct)
    {
        var texts = await model.DetokenizeAsync([.. tokens.Select(t => new[] { t })], ct);
        return [.. texts.Select((t, i) => string.Create(CultureInfo.InvariantCulture, $"{i}:{t.Trim()}"))];
    }

    public static string HeadLabel(int layer, int head) => string.Create(CultureInfo.InvariantCulture, $"L{layer}H{head}");
}
