using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.AnalysisWorker.Jobs;
using InterpMesh.Contracts.V1;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;

namespace InterpMesh.Plugins.Tests;

/// <summary>The "concepts" toy behind a gateway (console on its Web endpoint) and a worker with the built-in plugins.</summary>
public sealed class ConsoleSaeSteerFixture() : PluginMeshFixture(RepoPaths.Models("concepts"))
{
    private Task<Job>? trained;

    /// <summary>The small SAE both tests browse, trained once (a TopK SAE on blocks.0.hook_resid_post, 40 steps).</summary>
    public Task<Job> TrainedSae => trained ??= RunAsync("sae", JsonSerializer.Serialize(new
    {
        hook = "blocks.0.hook_resid_post", texts = ConsoleSaeSteerTests.Sentences(80, 1), architecture = "topk", d_sae = 64, k = 4,
        steps = 40, batch_tokens = 64, save_as = ConsoleSaeSteerTests.Sae,
    }));
}

/// <summary>
/// The console's SAE feature browser and steering playground (docs/console.md) in Debian's headless
/// Chromium: what the pages show is compared with what the same jobs and generations give over gRPC.
/// </summary>
public sealed class ConsoleSaeSteerTests(ConsoleSaeSteerFixture mesh) : IClassFixture<ConsoleSaeSteerFixture>
{
    internal const string Sae = "saes/console";

    /// <summary>Sentences of the concepts toy's grammar.</summary>
    internal static List<string> Sentences(int n, int seed)
    {
        string[] nouns = ["dog", "cat", "bird", "horse", "apple", "cake", "pie", "soup", "ball", "game", "team", "race"];
        string[] pos = ["happy", "good", "bright", "warm", "kind"], neg = ["sad", "bad", "dark", "cold", "cruel"];
        string[] pex = ["lovely", "great", "nice"], nex = ["awful", "grim", "poor"], topic = ["walk", "meal", "match"];
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ =>
        {
            int t = rng.Next(3);
            bool good = rng.Next(2) == 0, plural = rng.Next(2) == 0;
            string noun = nouns[t * 4 + rng.Next(4)] + (plural ? "s" : "");
            return $"the {noun} {(plural ? "are" : "is")} {(good ? pos : neg)[rng.Next(5)]} . what a {(good ? pex : nex)[rng.Next(3)]} {topic[t]} .";
        })];
    }

    private Contracts.V1.ModelService.ModelServiceClient Models => new(mesh.Channel);

    /// <summary>A greedy gRPC Generate: the generated text and the receipts.</summary>
    private async Task<(string Text, IReadOnlyList<InterventionReceipt> Receipts)> GenerateAsync(string prompt, int tokens, Intervention? intervention = null)
    {
        var request = new GenerateRequest { MaxNewTokens = tokens };
        request.Prompts.Add(new Input { Text = prompt });
        if (intervention is not null)
            request.Interventions.Add(intervention);
        var text = new StringBuilder();
        IReadOnlyList<InterventionReceipt> receipts = [];
        using var call = Models.Generate(request, Mesh.As(Mesh.AliceKey));
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            if (m.TokenIds.Count > 0 && m.TokenIds[0] >= 0)
                text.Append(m.Texts[0]);
            if (m.Final)
                receipts = [.. m.Receipts];
        }
        return (text.ToString(), receipts);
    }

    /// <summary>An ADD of coefficient × a saved vector's tensor, as float32 (the vector read by the worker's artifact store, not the page).</summary>
    private async Task<Intervention> AddAsync(string artifact, string tensor, double coefficient, int layer)
    {
        float[] direction;
        var loaded = await mesh.WorkerServices.GetRequiredService<PluginArtifacts>().LoadTensorsAsync(artifact);
        try
        {
            direction = loaded[tensor].data<float>().ToArray();
        }
        finally
        {
            foreach (var t in loaded.Values)
                t.Dispose();
        }
        var scaled = direction.Select(v => (float)(coefficient * v)).ToArray();
        var bytes = new byte[scaled.Length * 4];
        Buffer.BlockCopy(scaled, 0, bytes, 0, bytes.Length);
        return new Intervention
        {
            Hook = $"blocks.{layer}.hook_resid_post", Op = InterventionOp.Add,
            Value = new Tensor { Shape = { scaled.Length }, Dtype = DType.Float32, Data = ByteString.CopyFrom(bytes) },
        };
    }

    /// <summary>The steered generation's receipt on the page equals the gRPC one, which changed something.</summary>
    private static async Task AssertReceiptAsync(IPage page, InterventionReceipt receipt)
    {
        Assert.True(receipt.ElementsChanged > 0);
        Assert.True(receipt.L2Norm > 0);
        Assert.Equal(receipt.ElementsChanged.ToString(CultureInfo.InvariantCulture), await page.GetAttributeAsync("#receipt", "data-elements"));
        double shownNorm = double.Parse((await page.GetAttributeAsync("#receipt", "data-norm"))!, CultureInfo.InvariantCulture);
        Assert.True(Math.Abs(shownNorm - receipt.L2Norm) <= 1e-4 * Math.Max(1, receipt.L2Norm), $"receipt norm: page {shownNorm}, gRPC {receipt.L2Norm}");
        Assert.Equal(receipt.ElementsChanged.ToString(CultureInfo.InvariantCulture), await page.InnerTextAsync("#receipt-elements"));
    }

    /// <summary>A page with the API key in the tab's session storage, failing the test on console errors and failed requests.</summary>
    private async Task<(IPage Page, List<string> Problems)> OpenAsync(IBrowser browser)
    {
        var page = await browser.NewPageAsync();
        var problems = Chromium.Watch(page);
        await page.GotoAsync(mesh.WebUrl + "/");
        await page.EvaluateAsync("k => sessionStorage.setItem('interpmesh.apiKey', k)", Mesh.AliceKey);
        return (page, problems);
    }

    [Fact]
    public async Task A_feature_browsed_in_the_console_shows_what_inspect_returns_and_steers_a_generation_as_grpc_does()
    {
        var train = await mesh.TrainedSae;
        Assert.True(train.State == JobState.Succeeded, train.Error);
        var texts = Sentences(12, 7);

        var (playwright, browser) = await Chromium.LaunchAsync();
        using var _ = playwright;
        await using var __ = browser;
        var (page, problems) = await OpenAsync(browser);

        // The browser: features ranked by density on the texts.
        await page.GotoAsync(mesh.WebUrl + "/#/sae");
        await page.WaitForSelectorAsync($"#sae-artifact option[value='{Sae}']", new() { State = WaitForSelectorState.Attached });
        await page.SelectOptionAsync("#sae-artifact", Sae);
        await page.FillAsync("#sae-texts", string.Join("\n", texts));
        await page.ClickAsync("#find-features");
        await page.WaitForSelectorAsync("#features-done", new() { Timeout = 30_000 });
        var listed = await page.EvalOnSelectorAllAsync<string[][]>("#feature-list tbody tr", "trs => trs.map(tr => [tr.dataset.feature, tr.querySelector('[data-density]').dataset.density])");
        Assert.NotEmpty(listed);
        var densities = listed.Select(r => double.Parse(r[1], CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(densities.OrderByDescending(d => d), densities);
        int feature = int.Parse(listed[0][0], CultureInfo.InvariantCulture);
        // Which features fire on a token.
        await page.FillAsync("#token-search", "the");
        await page.WaitForSelectorAsync("#token-features tbody tr");
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "sae.png"), FullPage = true });

        // The feature's page against the same inspect job over gRPC.
        await page.ClickAsync($"a[data-feature-link='{feature}']");
        await page.WaitForSelectorAsync("#feature-contexts li", new() { Timeout = 30_000 });
        await page.WaitForSelectorAsync("#steer-link");
        var inspect = await mesh.RunAsync("sae", JsonSerializer.Serialize(new { mode = "inspect", sae = Sae, texts, feature, top = 5 }));
        Assert.True(inspect.State == JobState.Succeeded, inspect.Error);
        var summary = JsonNode.Parse(inspect.Result.SummaryJson)!;
        var contexts = JsonNode.Parse(inspect.Result.Tables.Single(t => t.Name == "contexts").RowsJson)!.AsArray();
        var shown = await page.EvalOnSelectorAllAsync<string[][]>("#feature-contexts > li",
            "lis => lis.map(li => [li.dataset.text, ...[...li.querySelectorAll('.tok')].flatMap(s => [s.dataset.token, s.dataset.activation, s.querySelector('.tok-act').textContent])])");
        Assert.Equal(contexts.Count, shown.Length);
        Assert.True(shown.Length > 0);
        for (int c = 0; c < contexts.Count; c++)
        {
            Assert.Equal(contexts[c]![1]!.GetValue<string>(), shown[c][0]);
            var pairs = contexts[c]![2]!.AsArray();
            Assert.Equal(pairs.Count * 3, shown[c].Length - 1);
            for (int t = 0; t < pairs.Count; t++)
            {
                Assert.Equal(pairs[t]![0]!.GetValue<string>(), shown[c][1 + 3 * t]);
                double expected = pairs[t]![1]!.GetValue<double>(), onPage = double.Parse(shown[c][2 + 3 * t], CultureInfo.InvariantCulture);
                Assert.True(Math.Abs(expected - onPage) <= 1e-4, $"context {c} token {t}: page {onPage}, gRPC {expected}");
                // The activation is written out too, not only a shade.
                Assert.Equal(expected > 0 ? expected.ToString("F2", CultureInfo.InvariantCulture) : "0", shown[c][3 + 3 * t]);
            }
        }
        Assert.True(contexts[0]![2]!.AsArray().Any(p => p![1]!.GetValue<double>() > 0), "the top context must show the feature firing");
        double density = summary["density"]!.GetValue<double>();
        Assert.Equal(density, double.Parse(await page.GetAttributeAsync("#feature-density", "data-density") ?? "", CultureInfo.InvariantCulture), 1e-9);
        // The browser's ranking (its own job's density table) says the same density for this feature.
        Assert.Equal(density, densities[0], 1e-9);
        Assert.Equal(summary["promotes"]!.AsArray().Select(p => p!.GetValue<string>()),
            await page.EvalOnSelectorAllAsync<string[]>("#feature-promotes li", "lis => lis.map(l => l.dataset.token)"));
        Assert.Equal(summary["suppresses"]!.AsArray().Select(p => p!.GetValue<string>()),
            await page.EvalOnSelectorAllAsync<string[]>("#feature-suppresses li", "lis => lis.map(l => l.dataset.token)"));
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "sae-feature.png"), FullPage = true });

        // Steer with it: the playground opens with the feature chosen.
        await page.ClickAsync("#steer-link");
        await page.WaitForSelectorAsync("#steer-form");
        await page.WaitForSelectorAsync($"#steer-sae option[value='{Sae}']", new() { State = WaitForSelectorState.Attached });
        Assert.Equal(Sae, await page.InputValueAsync("#steer-sae"));
        Assert.Equal(feature.ToString(CultureInfo.InvariantCulture), await page.InputValueAsync("#steer-feature"));
        const string prompt = "the dog is";
        const int tokens = 10;
        const double coefficient = 20;
        await page.FillAsync("#steer-prompt", prompt);
        await page.FillAsync("#steer-coefficient-value", "20");
        await page.FillAsync("#steer-max-tokens", tokens.ToString(CultureInfo.InvariantCulture));
        await page.ClickAsync("#steer-generate");
        await page.WaitForSelectorAsync("#steer-done", new() { Timeout = 30_000 });
        Assert.Equal("20", await page.InputValueAsync("#steer-coefficient"));
        string plain = await page.InnerTextAsync("#unsteered .generated"), steered = await page.InnerTextAsync("#steered .generated");
        Assert.NotEqual(plain, steered);
        Assert.Equal((await GenerateAsync(prompt, tokens)).Text, await page.EvalOnSelectorAsync<string>("#unsteered .generated", "e => e.textContent"));

        // The vector the page used (the export_direction artifact), read by the worker, added over gRPC.
        string vector = (await page.GetAttributeAsync("#vector-ready", "data-vector"))!;
        string tensor = (await page.GetAttributeAsync("#vector-ready", "data-tensor"))!;
        Assert.Equal("mean_diff.0", tensor);
        var (grpcSteered, receipts) = await GenerateAsync(prompt, tokens, await AddAsync(vector, tensor, coefficient, 0));
        Assert.Equal(grpcSteered, await page.EvalOnSelectorAsync<string>("#steered .generated", "e => e.textContent"));
        await AssertReceiptAsync(page, Assert.Single(receipts));
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "steer.png"), FullPage = true });
        Assert.Empty(problems);
    }

    [Fact]
    public async Task A_steering_vector_artifact_steers_in_the_playground_and_a_feature_out_of_range_is_announced()
    {
        string[] good = ["happy", "good", "bright", "warm", "kind"], bad = ["sad", "bad", "dark", "cold", "cruel"];
        var extract = await mesh.RunAsync("steering", JsonSerializer.Serialize(new
        {
            positive = good.Select(w => $"the dog is {w} . what a").ToArray(), negative = bad.Select(w => $"the dog is {w} . what a").ToArray(),
            layers = new[] { 1 }, save_as = "steering/console-sentiment",
        }));
        Assert.True(extract.State == JobState.Succeeded, extract.Error);

        var (playwright, browser) = await Chromium.LaunchAsync();
        using var _ = playwright;
        await using var __ = browser;
        var (page, problems) = await OpenAsync(browser);
        await page.GotoAsync(mesh.WebUrl + "/#/steer?vector=steering/console-sentiment");
        await page.WaitForSelectorAsync("#steer-tensor option[value='pca.1']", new() { State = WaitForSelectorState.Attached });
        Assert.Equal("artifact", await page.InputValueAsync("#vector-source"));
        Assert.True(await page.IsHiddenAsync("#sae-source"));
        await page.SelectOptionAsync("#steer-tensor", "pca.1");
        Assert.Equal("1", await page.InputValueAsync("#steer-layer"));
        const string prompt = "the cat is sad . what a";
        const int tokens = 6;
        await page.FillAsync("#steer-prompt", prompt);
        await page.FillAsync("#steer-coefficient-value", "-3.5");
        await page.FillAsync("#steer-max-tokens", tokens.ToString(CultureInfo.InvariantCulture));
        // Keyboard: Enter in a field submits the form.
        await page.PressAsync("#steer-max-tokens", "Enter");
        await page.WaitForSelectorAsync("#steer-done", new() { Timeout = 30_000 });
        Assert.Equal((await GenerateAsync(prompt, tokens)).Text, await page.EvalOnSelectorAsync<string>("#unsteered .generated", "e => e.textContent"));
        var (steered, receipts) = await GenerateAsync(prompt, tokens, await AddAsync("steering/console-sentiment", "pca.1", -3.5, 1));
        Assert.Equal(steered, await page.EvalOnSelectorAsync<string>("#steered .generated", "e => e.textContent"));
        await AssertReceiptAsync(page, Assert.Single(receipts));

        // A feature the SAE does not have: the job's error, announced.
        var train = await mesh.TrainedSae;
        Assert.True(train.State == JobState.Succeeded, train.Error);
        await page.GotoAsync(mesh.WebUrl + "/#/sae?sae=" + Uri.EscapeDataString(Sae) + "&feature=640");
        var alert = await page.WaitForSelectorAsync("#sae-note [role='alert']", new() { Timeout = 30_000 });
        string text = await alert!.InnerTextAsync();
        Assert.Contains("failed", text, StringComparison.Ordinal);
        Assert.Contains("feature 640 is out of range; this SAE has 64 latents", text, StringComparison.Ordinal);
        // Narrow window: the page wraps instead of scrolling sideways.
        await page.SetViewportSizeAsync(420, 900);
        await page.GotoAsync(mesh.WebUrl + "/#/steer?vector=steering/console-sentiment");
        await page.WaitForSelectorAsync("#steer-tensor option[value='pca.1']", new() { State = WaitForSelectorState.Attached });
        Assert.True(await page.EvaluateAsync<bool>("() => document.documentElement.scrollWidth <= window.innerWidth + 1"), "the playground scrolls sideways at 420 px");
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "steer-narrow.png"), FullPage = true });
        Assert.Empty(problems);
    }
}
