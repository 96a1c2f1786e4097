using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins;
using TorchSharp;

namespace TokenStats;

/// <summary>
/// Mean L2 norm of activations at the hooks a glob matches (by default every residual stream
/// after a block), averaged over every token of the given texts: how the residual stream grows
/// with depth. Reports progress per text, saves the norms as an artifact and draws a bar chart.
/// </summary>
public sealed class TokenStatsPlugin : IAnalysisPlugin
{
    public PluginManifest Manifest { get; } = new(
        Id: "token-stats",
        Version: "1.0.0",
        Description: "Mean L2 norm of activations per hook over the given texts (a third-party plugin sample).",
        SdkVersion: SdkVersion.Current,
        ParameterSchema: JsonNode.Parse("""
            {
              "type": "object",
              "required": ["texts"],
              "additionalProperties": false,
              "properties": {
                "texts": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
                "hooks": { "type": "string", "description": "hook glob, default blocks.*.hook_resid_post" },
                "save_as": { "type": "string", "description": "artifact name for the norms" }
              }
            }
            """)!.AsObject(),
        Produces: ["table:norms", "figure:norms", "artifact:norms"]);

    public async Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
    {
        var texts = parameters.GetProperty("texts").EnumerateArray().Select(t => t.GetString()!).ToList();
        string glob = parameters.TryGetProperty("hooks", out var h) ? h.GetString()! : "blocks.*.hook_resid_post";
        var info = await context.Model.GetInfoAsync(context.Cancellation);
        var sums = new Dictionary<string, double>();
        long tokens = 0;
        for (int i = 0; i < texts.Count; i++)
        {
            context.ReportProgress((double)i / texts.Count, $"text {i + 1}/{texts.Count}");
            var request = new RunRequest { Inputs = { new Input { Text = texts[i] } }, Captures = { new Capture { Hooks = { glob } } } };
            bool firstHook = true;
            await foreach (var output in context.Model.RunAsync(request, context.Cancellation))
            {
                if (output.Activation is { } activation)
                {
                    using (activation)
                    using (var norms = activation.to(torch.ScalarType.Float32).norm(-1))
                    {
                        // Every hook covers the same tokens: count them once per text.
                        if (firstHook)
                            tokens += norms.NumberOfElements;
                        firstHook = false;
                        sums[output.Hook!] = sums.GetValueOrDefault(output.Hook!) + norms.sum().item<float>();
                    }
                }
            }
        }
        var order = info.Hooks.Select(x => x.Name).Where(sums.ContainsKey).ToList();
        var means = order.Select(name => sums[name] / tokens).ToList();
        context.Logger.LogInformationSafe($"token-stats: {order.Count} hooks over {tokens} tokens");

        var artifacts = new List<string>();
        if (parameters.TryGetProperty("save_as", out var saveAs))
        {
            using var values = torch.tensor(means.Select(m => (float)m).ToArray());
            var metadata = new JsonObject { ["model"] = context.Model.Name, ["hooks"] = new JsonArray([.. order.Select(o => (JsonNode)o)]) };
            await context.Artifacts.SaveTensorsAsync(saveAs.GetString()!, new Dictionary<string, torch.Tensor> { ["mean_norm"] = values }, metadata, context.Cancellation);
            artifacts.Add(saveAs.GetString()!);
        }
        context.ReportProgress(1, "done");
        int top = means.IndexOf(means.Max());
        return new PluginResult
        {
            Summary = new JsonObject { ["model"] = info.Architecture, ["texts"] = texts.Count, ["tokens"] = tokens, ["largest"] = order[top] },
            Tables = [new ResultTable("norms", ["hook", "mean_norm"], [.. order.Select((name, k) => (IReadOnlyList<JsonNode?>)[name, means[k]])])],
            Artifacts = artifacts,
            Figures = [new ResultFigure("norms", "image/svg+xml", Bars(order, means), "Mean L2 norm per hook")],
        };
    }

    private static byte[] Bars(List<string> labels, List<double> values)
    {
        double max = Math.Max(values.Max(), 1e-9);
        var svg = new StringBuilder($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{40 + 30 * values.Count}\" height=\"220\">");
        for (int i = 0; i < values.Count; i++)
        {
            double height = 180 * values[i] / max;
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{30 + 30 * i}\" y=\"{200 - height:0.0}\" width=\"24\" height=\"{height:0.0}\" fill=\"#4472c4\"><title>{labels[i]}: {values[i]:0.###}</title></rect>");
        }
        return Encoding.UTF8.GetBytes(svg.Append("</svg>").ToString());
    }
}

internal static class LoggerExtensions
{
    public static void LogInformationSafe(this Microsoft.Extensions.Logging.ILogger logger, string message)
    {
        if (logger.IsEnabled(Microsoft.Extensions.Logging.LogLevel.Information))
            logger.Log(Microsoft.Extensions.Logging.LogLevel.Information, 0, message, null, (s, _) => s);
    }
}
