using System.Globalization;
using System.Text.Json;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Tests;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// Issue #24's web console with the real probing and SAE plugins (the <c>concepts</c> toy behind a
/// gateway and a worker), in Debian's headless Chromium: the run form generated from a polymorphic
/// parameter schema, a probing job's accuracy table and figure, artifact downloads, cancelling a job.
/// </summary>
public sealed class ConsoleProbingTests(ConceptsMeshFixture mesh) : IClassFixture<ConceptsMeshFixture>
{
    private static readonly string[] Positive = ["happy", "good", "bright", "warm", "kind"];
    private static readonly string[] Negative = ["sad", "bad", "dark", "cold", "cruel"];
    private static readonly string[] Nouns = ["dog", "cat", "bird", "apple", "cake", "ball", "game", "team"];

    private async Task<(Microsoft.Playwright.IPlaywright, Microsoft.Playwright.IBrowser, Microsoft.Playwright.IPage)> OpenAsync()
    {
        var (playwright, browser) = await Chromium.LaunchAsync();
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
        await page.GotoAsync(mesh.WebUrl + "/");
        await page.EvaluateAsync("k => sessionStorage.setItem('interpmesh.apiKey', k)", Mesh.AliceKey);
        return (playwright, browser, page);
    }

    [Fact]
    public async Task A_probing_job_from_the_generated_form_completes_with_its_accuracy_table_figure_and_downloadable_probe()
    {
        var (playwright, browser, page) = await OpenAsync();
        using var _ = playwright;
        await using var __ = browser;
        var problems = Chromium.Watch(page);
        await page.GotoAsync(mesh.WebUrl + "/#/run?plugin=probing");

        // The schema is one form per mode: a mode selector, train (the default) first.
        await page.WaitForSelectorAsync("select#param-mode");
        var modes = await page.EvalOnSelectorAllAsync<string[]>("#param-mode option", "os => os.map(o => o.value)");
        Assert.Equal(["train", "apply"], modes);
        Assert.Equal("train", await page.InputValueAsync("#param-mode"));
        Assert.Equal("0.25", await page.InputValueAsync("#param-holdout"));
        Assert.NotNull(await page.QuerySelectorAsync("#param-hooks"));
        // apply has its own fields: a saved probe, and no training split.
        await page.SelectOptionAsync("#param-mode", "apply");
        await page.WaitForSelectorAsync("#param-probe");
        Assert.Null(await page.QuerySelectorAsync("#param-holdout"));
        await page.SelectOptionAsync("#param-mode", "train");
        await page.WaitForSelectorAsync("#param-holdout");
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "run-probing.png"), FullPage = true });

        // "the dog is very happy . what a" → positive (the toy's card: sentiment is linear from layer 0).
        var rng = new Random(5);
        var texts = new List<string>();
        var labels = new List<string>();
        for (int i = 0; i < 80; i++)
        {
            bool positive = i % 2 == 0;
            texts.Add($"the {Nouns[rng.Next(Nouns.Length)]} is {(positive ? Positive : Negative)[rng.Next(5)]} . what a");
            labels.Add(positive ? "positive" : "negative");
        }
        await page.FillAsync("#param-texts", string.Join("\n", texts));
        // labels may be strings, integers or booleans: a union, so the form takes it as JSON.
        await page.FillAsync("#param-labels", JsonSerializer.Serialize(labels));
        await page.FillAsync("#param-hooks", "blocks.0.hook_resid_post\nblocks.1.hook_resid_post");
        await page.FillAsync("#param-sparse", "{\"enabled\": false}");
        await page.FillAsync("#param-save_prefix", "probes/console");
        await page.ClickAsync("#submit-job");
        await page.WaitForSelectorAsync("#job-state [data-state], .field-error:not(:empty), #form-error .error", new() { Timeout = 30_000 });
        await page.WaitForSelectorAsync("#job-state [data-state]:not([data-state='JOB_STATE_QUEUED']):not([data-state='JOB_STATE_RUNNING']), .field-error:not(:empty), #form-error .error", new() { Timeout = 120_000 });
        if (await page.QuerySelectorAsync("[data-state='JOB_STATE_SUCCEEDED']") is null)
            Assert.Fail("the job did not succeed; the page says:\n" + await page.InnerTextAsync("#main"));
        await page.WaitForSelectorAsync("table[data-table='per_hook'] tbody tr");

        string id = page.Url[(page.Url.IndexOf("#/jobs/", StringComparison.Ordinal) + 7)..];
        var job = await new AnalysisService.AnalysisServiceClient(mesh.Channel).GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(JobState.Succeeded, job.State);
        using (var sent = JsonDocument.Parse(job.ParametersJson))
            Assert.Equal("train", sent.RootElement.GetProperty("mode").GetString());
        // The accuracy table as GetJob returns it over gRPC (cells within the page's 4 decimals).
        var rows = JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "per_hook").RowsJson).RootElement;
        var cells = await page.EvalOnSelectorAllAsync<string[][]>("table[data-table='per_hook'] tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.textContent))");
        Assert.Equal(2, cells.Length);
        Assert.Equal(rows.GetArrayLength(), cells.Length);
        for (int r = 0; r < cells.Length; r++)
        {
            Assert.Equal(rows[r][0].GetString(), cells[r][0]);
            double accuracy = double.Parse(cells[r][2], CultureInfo.InvariantCulture);
            Assert.True(Math.Abs(rows[r][2].GetDouble() - accuracy) <= 1e-4, $"row {r}: {cells[r][2]} vs {rows[r][2]}");
            Assert.True(accuracy >= 0.9, $"{cells[r][0]}: accuracy {accuracy}");
        }
        Assert.True(await page.EvalOnSelectorAsync<int>("figure[data-figure='accuracy_by_layer'] img", "img => img.complete ? img.naturalWidth : 0") > 0,
            "the accuracy figure did not render");

        // A saved probe downloads from the page with the bytes the ArtifactService holds.
        string name = "probes/console/blocks.1.hook_resid_post";
        Assert.Contains(name, job.Result.Artifacts);
        await page.ClickAsync($"button[data-artifact='{name}']");
        var link = await page.WaitForSelectorAsync($"[data-files-of='{name}'] a[data-file]");
        string file = (await link!.GetAttributeAsync("data-file"))!;
        var download = await page.RunAndWaitForDownloadAsync(() => link.ClickAsync());
        byte[] downloaded = await File.ReadAllBytesAsync((await download.PathAsync())!);
        var stored = await ArtifactFileAsync(name, file);
        Assert.True(stored.Length > 0);
        Assert.Equal(stored, downloaded);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "job-probing.png"), FullPage = true });
        Assert.Empty(problems);
    }

    [Fact]
    public async Task A_running_job_is_cancelled_from_its_page()
    {
        // An SAE training run far too long to finish: cancelled between steps.
        var analysis = new AnalysisService.AnalysisServiceClient(mesh.Channel);
        var job = await analysis.SubmitJobAsync(new AnalysisRequest
        {
            Plugin = "sae",
            ParametersJson = JsonSerializer.Serialize(new { hook = "blocks.0.hook_resid_post", texts = Enumerable.Range(0, 40).Select(i => $"the {Nouns[i % Nouns.Length]} is {Positive[i % 5]} . what a").ToArray(), batch_tokens = 32, steps = 1_000_000, save_as = "sae/console-cancelled" }),
        }, Mesh.As(Mesh.AliceKey));

        var (playwright, browser, page) = await OpenAsync();
        using var _ = playwright;
        await using var __ = browser;
        var problems = Chromium.Watch(page);
        var requests = new List<string>();
        page.Request += (_, r) => requests.Add(r.Url);
        await page.GotoAsync($"{mesh.WebUrl}/#/jobs/{job.Id}");
        await page.WaitForSelectorAsync("#job-state [data-state='JOB_STATE_RUNNING']", new() { Timeout = 60_000 });
        // Training progress arrives over the watch stream (every 10 steps), not by polling the record.
        await page.WaitForFunctionAsync("() => document.querySelectorAll('#job-log li').length >= 3", null, new() { Timeout = 60_000 });
        Assert.True(await page.IsVisibleAsync("#cancel-job"));
        await page.ClickAsync("#cancel-job");
        await page.WaitForSelectorAsync("#job-state [data-state='JOB_STATE_CANCELLED']", new() { Timeout = 60_000 });
        Assert.False(await page.IsVisibleAsync("#cancel-job"), "a finished job still offers Cancel");
        Assert.Equal(1, requests.Count(u => u.EndsWith($"/v1/jobs/{job.Id}", StringComparison.Ordinal)));
        Assert.Equal(1, requests.Count(u => u.EndsWith($"/v1/jobs/{job.Id}:watch", StringComparison.Ordinal)));
        var final = await analysis.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(JobState.Cancelled, final.State);
        // The progress log recorded the states the page saw.
        var log = await page.InnerTextAsync("#job-log");
        Assert.Contains("running", log, StringComparison.Ordinal);
        Assert.Contains("cancelled", log, StringComparison.Ordinal);
        Assert.Empty(problems);
    }

    /// <summary>One file of an artifact, read over gRPC (a second path to the same store).</summary>
    private async Task<byte[]> ArtifactFileAsync(string name, string file)
    {
        var client = new ArtifactService.ArtifactServiceClient(mesh.Channel);
        using var call = client.GetArtifact(new GetArtifactRequest { Name = name }, Mesh.As(Mesh.AliceKey));
        byte[]? content = null;
        await foreach (var chunk in call.ResponseStream.ReadAllAsync())
        {
            if (chunk.Header is { } header)
                content = new byte[header.Files.Single(f => f.Name == file).Bytes];
            else if (chunk.Data is { } data && data.File == file)
                data.Data.Span.CopyTo(content.AsSpan((int)data.Offset));
        }
        return content!;
    }
}
