using System.Globalization;
using System.Text.Json;
using InterpMesh.Tests;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// Issue #24's "logit lens per layer" in the console's model explorer, on the <c>induction</c> toy
/// with every built-in plugin, in Debian's headless Chromium: the grid the page draws from the circuits
/// plugin's <c>logit_lens</c> job against the same job run over gRPC.
/// </summary>
public sealed class ConsoleLogitLensTests(InductionMeshFixture mesh) : IClassFixture<InductionMeshFixture>
{
    [Fact]
    public async Task The_explorers_logit_lens_shows_the_circuits_plugins_answer_probabilities()
    {
        // A repeated segment: at the last position the induction heads predict t06 (it followed t05 before).
        const string prompt = "t01 t02 t03 t04 t05 t06 t07 t01 t02 t03 t04 t05";
        const string answer = "t06";
        // The independent path: the same job over gRPC.
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "logit_lens", pairs = new[] { new { clean = prompt, answer } }, top_k = 3 }));
        Assert.True(job.State == Contracts.V1.JobState.Succeeded, job.Error);
        var rows = JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "logit_lens").RowsJson).RootElement.EnumerateArray().ToList();

        var (playwright, browser) = await Chromium.LaunchAsync();
        using var _ = playwright;
        await using var __ = browser;
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
        var problems = Chromium.Watch(page);
        await page.GotoAsync(mesh.WebUrl + "/");
        await page.EvaluateAsync("k => sessionStorage.setItem('interpmesh.apiKey', k)", Mesh.AliceKey);
        await page.GotoAsync($"{mesh.WebUrl}/#/model?prompt={Uri.EscapeDataString(prompt)}&answer={answer}");
        await page.WaitForSelectorAsync("[data-info='nLayers']");
        await page.ClickAsync("#show-lens");
        await page.WaitForSelectorAsync("#lens-done, #main .error", new() { Timeout = 60_000 });
        Assert.Null(await page.QuerySelectorAsync("#main .error"));

        var cells = await page.EvalOnSelectorAllAsync<string[][]>("table.lens td[data-prob]",
            "els => els.map(e => [e.dataset.layer, e.dataset.position, e.dataset.prob, e.dataset.top])");
        Assert.Equal(rows.Count, cells.Length);
        foreach (var c in cells)
        {
            int layer = int.Parse(c[0], CultureInfo.InvariantCulture), position = int.Parse(c[1], CultureInfo.InvariantCulture);
            var row = rows.Single(r => r[1].GetInt32() == layer && r[3].GetInt32() == position);
            Assert.True(Math.Abs(row[9].GetDouble() - double.Parse(c[2], CultureInfo.InvariantCulture)) <= 1e-4, $"layer {layer} position {position}: page {c[2]}, job {row[9]}");
            Assert.Equal(row[5].GetString()!.Split(" | ")[0], c[3]);
        }
        // The lens reads the induction: at the last position the model's own output (the last layer)
        // gives the answer most of the probability, the embeddings alone do not.
        int last = rows.Max(r => r[3].GetInt32());
        int lastLayer = rows.Max(r => r[1].GetInt32());
        double Prob(int layer) => double.Parse(cells.Single(c => c[0] == layer.ToString(CultureInfo.InvariantCulture) && c[1] == last.ToString(CultureInfo.InvariantCulture))[2], CultureInfo.InvariantCulture);
        Assert.True(Prob(lastLayer) > 0.5, $"P(answer) at the last layer: {Prob(lastLayer)}");
        Assert.True(Prob(-1) < 0.2, $"P(answer) from the embeddings: {Prob(-1)}");
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "model-lens.png"), FullPage = true });
        Assert.Empty(problems);
    }
}
