using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins;
using InterpMesh.Plugins.Testing;
using TokenStats;
using TorchSharp;
using Xunit;

namespace TokenStats.Tests;

/// <summary>One model for the class: loading it is the slow part.</summary>
public sealed class StoriesModel : IDisposable
{
    public TestModel Model { get; } = TestModel.Load(FindModel());

    /// <summary>TOKENSTATS_MODEL, or the repository's stories260K found above this folder.</summary>
    private static string FindModel()
    {
        if (Environment.GetEnvironmentVariable("TOKENSTATS_MODEL") is { Length: > 0 } given)
            return given;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "models", "stories260K", "stories260K.bin");
            if (File.Exists(candidate))
                return candidate;
        }
        throw new FileNotFoundException("set TOKENSTATS_MODEL to a llama2.c .bin or Hugging Face folder (the repository's models/stories260K/stories260K.bin is not above this folder)");
    }

    public void Dispose() => Model.Dispose();
}

public sealed class TokenStatsPluginTests(StoriesModel stories) : IClassFixture<StoriesModel>
{
    private static readonly string[] Texts = ["Once upon a time there was a little dog.", "The cat sat on the mat and purred."];

    [Fact]
    public async Task Mean_norms_match_a_second_computation_from_the_captures()
    {
        using var context = stories.Model.NewContext();
        var result = await PluginHarness.RunAsync(new TokenStatsPlugin(),
            """{ "texts": ["Once upon a time there was a little dog.", "The cat sat on the mat and purred."], "save_as": "norms/stories" }""", context);

        // The same statistic computed here from the raw captures, hook by hook.
        var sums = new Dictionary<string, double>();
        long tokens = 0;
        foreach (var text in Texts)
        {
            var request = new RunRequest { Inputs = { new Input { Text = text } }, Captures = { new Capture { Hooks = { "blocks.*.hook_resid_post" } } } };
            await foreach (var output in stories.Model.Client.RunAsync(request))
            {
                if (output.Activation is not { } activation)
                    continue;
                using (activation)
                {
                    var norms = activation.norm(-1);
                    sums[output.Hook!] = sums.GetValueOrDefault(output.Hook!) + norms.sum().item<float>();
                    if (output.Layer == 0)
                        tokens += norms.NumberOfElements;
                }
            }
        }
        var table = Assert.Single(result.Tables);
        Assert.Equal("norms", table.Name);
        Assert.Equal(5, table.Rows.Count); // stories260K has 5 blocks
        foreach (var row in table.Rows)
        {
            string hook = row[0]!.GetValue<string>();
            double expected = sums[hook] / tokens;
            Assert.InRange(row[1]!.GetValue<double>(), expected * (1 - 1e-5), expected * (1 + 1e-5));
        }
        Assert.Equal(tokens, result.Summary["tokens"]!.GetValue<long>());
    }

    [Fact]
    public async Task The_norms_artifact_holds_the_table_and_progress_reaches_one()
    {
        using var context = stories.Model.NewContext();
        var result = await PluginHarness.RunAsync(new TokenStatsPlugin(), """{ "texts": ["One day a girl found a ball."], "save_as": "norms/one" }""", context);

        Assert.Equal(["norms/one"], result.Artifacts);
        var saved = await context.Artifacts.LoadTensorsAsync("norms/one");
        using var means = saved["mean_norm"];
        var table = result.Tables[0];
        Assert.Equal(table.Rows.Count, (int)means.shape[0]);
        for (int i = 0; i < table.Rows.Count; i++)
            Assert.Equal(table.Rows[i][1]!.GetValue<double>(), means[i].item<float>(), 1e-4);
        var stored = await context.Artifacts.FindAsync("norms/one");
        Assert.Equal("test-model", stored!.Metadata["model"]!.GetValue<string>());

        Assert.Equal(1.0, context.Progress[^1].Fraction);
        Assert.Contains(context.Logs, l => l.Message.Contains("hooks over", StringComparison.Ordinal));
        Assert.Equal("image/svg+xml", Assert.Single(result.Figures).MediaType);
    }

    [Theory]
    [InlineData("""{ "texts": [] }""", "texts")]
    [InlineData("""{ "texts": ["a"], "hook": "blocks.0.hook_resid_post" }""", "hook")]
    [InlineData("""{ "hooks": "blocks.*" }""", "texts")]
    public async Task Bad_parameters_are_refused_before_the_model_runs(string parameters, string named)
    {
        using var context = stories.Model.NewContext();
        var error = await Assert.ThrowsAsync<InvalidParametersException>(() => PluginHarness.RunAsync(new TokenStatsPlugin(), parameters, context));
        Assert.Contains(named, error.Message, StringComparison.Ordinal);
        Assert.Empty(context.Progress);
    }

    [Fact]
    public async Task A_cancelled_run_stops_with_operation_cancelled()
    {
        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        using var context = stories.Model.NewContext(cancellation: cancel.Token);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            PluginHarness.RunAsync(new TokenStatsPlugin(), """{ "texts": ["Once upon a time"] }""", context));
    }
}
