using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins;
using TorchSharp;

namespace TokenStats;

/// <summary>The parameters of <see cref="TokenStatsPlugin"/>; the manifest's JSON Schema is generated from them.</summary>
public sealed class TokenStatsParameters
{
    [Description("texts to run through the model")]
    [MinLength(1)]
    public required IReadOnlyList<string> Texts { get; init; }

    [Description("hook glob")]
    public string Hooks { get; init; } = "blocks.*.hook_resid_post";

    [Description("artifact name for the norms")]
    public string? SaveAs { get; init; }
}

/// <summary>
/// Mean L2 norm of activations at the hooks a glob matches (by default every residual stream
/// after a block), averaged over every token of the given texts: how the residual stream grows
/// with depth. Reports progress per text, saves the norms as an artifact and draws a bar chart.
/// Written against the SDK's typed base (<see cref="AnalysisPlugin{TParameters}"/>).
/// </summary>
public sealed class TokenStatsPlugin() : AnalysisPlugin<TokenStatsParameters>(
    id: "token-stats",
    version: "1.1.0",
    description: "Mean L2 norm of activations per hook over the given texts (a third-party plugin sample).",
    produces: ["table:norms", "figure:norms", "artifact:norms"])
{
    protected override async Task<PluginResult> RunAsync(TokenStatsParameters parameters, IAnalysisContext context)
    {
        var texts = parameters.Texts;
        string glob = parameters.Hooks;
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
        if (parameters.SaveAs is { } saveAs)
        {
            using var values = torch.tensor(means.Select(m => (float)m).ToArray());
            var metadata = new JsonObject { ["model"] = context.Model.Name, ["hooks"] = new JsonArray([.. order.Select(o => (JsonNode)o)]) };
            await context.Artifacts.SaveTensorsAsync(saveAs, new Dictionary<string, torch.Tensor> { ["mean_norm"] = values }, metadata, context.Cancellation);
            artifacts.Add(saveAs);
        }
        context.ReportProgress(1, "done");
        int top = means.IndexOf(means.Max());
        return new PluginResult
        {
            Summary = new JsonObject { ["model"] = info.Architecture, ["texts"] = texts.Count, ["tokens"] = tokens, ["largest"] = order[top] },
            Tables = [new ResultTable { Name = "norms", Columns = ["hook", "mean_norm"], Rows = [.. order.Select((name, k) => (IReadOnlyList<JsonNode?>)[name, means[k]])] }],
            Artifacts = artifacts,
            Figures = [new ResultFigure { Name = "norms", MediaType = "image/svg+xml", Content = Encoding.UTF8.GetBytes(Figures.Bars("Mean L2 norm per hook", "mean L2 norm", [.. order.Select((name, k) => (name, means[k]))])), Caption = "Mean L2 norm per hook" }],
        };
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
