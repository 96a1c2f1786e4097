using System.Globalization;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.Playwright;

namespace InterpMesh.Gateway.Tests;

/// <summary>The <c>induction</c> toy behind a gateway (with its HTTP/1.1 Web endpoint, where the console is served) and a worker with the token-stats plugin.</summary>
public sealed class ConsoleMeshFixture : IAsyncLifetime
{
    private WebApplication? service;
    private WebApplication? gateway;

    public string DataPath { get; } = TempFolders.Create("interpmesh-console-data-");
    public string PluginsPath { get; } = TempFolders.Create("interpmesh-console-plugins-");
    public int WebPort { get; } = Ports.Free();
    public string WebUrl => $"http://127.0.0.1:{WebPort}";
    public Grpc.Net.Client.GrpcChannel Channel { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var (tokenStats, _, _) = await PluginBuilds.OutputsAsync();
        TestPlugins.Copy(tokenStats, Path.Combine(PluginsPath, "token-stats"));
        string address;
        (service, address) = await Mesh.StartModelServiceAsync(RepoPaths.Models("induction"));
        string grpc;
        (gateway, grpc) = await Mesh.StartGatewayAsync([address], PluginsPath, DataPath, settings: new()
        {
            ["Kestrel:Endpoints:Web:Url"] = WebUrl,
            ["Kestrel:Endpoints:Web:Protocols"] = "Http1",
        });
        Channel = Mesh.Channel(grpc);
    }

    public async Task DisposeAsync()
    {
        Channel?.Dispose();
        await Mesh.StopAsync(gateway, service);
        TempFolders.Delete(DataPath, PluginsPath);
    }
}

/// <summary>Issue #24's web console in Debian's headless Chromium against a real gateway and model service.</summary>
[Collection("gateways")]
public sealed class ConsoleTests(ConsoleMeshFixture mesh) : IClassFixture<ConsoleMeshFixture>
{
    [Fact]
    public async Task The_console_is_served_with_a_strict_csp_a_wrong_key_gets_a_clear_message_and_a_good_key_opens_the_jobs_page()
    {
        using var http = new HttpClient();
        using var index = await http.GetAsync(mesh.WebUrl + "/");
        Assert.Equal(System.Net.HttpStatusCode.OK, index.StatusCode);
        var csp = string.Join(";", index.Headers.GetValues("Content-Security-Policy"));
        Assert.Contains("default-src 'self'", csp, StringComparison.Ordinal);
        Assert.Contains("script-src 'self'", csp, StringComparison.Ordinal);
        Assert.DoesNotContain("unsafe-inline", csp, StringComparison.Ordinal);
        Assert.DoesNotContain("<script>", await index.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        var (playwright, browser) = await Chromium.LaunchAsync();
        using var _ = playwright;
        await using var __ = browser;
        var page = await browser.NewPageAsync();
        var problems = Chromium.Watch(page);
        await page.GotoAsync(mesh.WebUrl + "/");
        await page.WaitForSelectorAsync("#api-key");
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "key.png") });
        Assert.Empty(problems);

        await page.FillAsync("#api-key", "not-a-key");
        await page.PressAsync("#api-key", "Enter");
        var message = await page.WaitForSelectorAsync("#key-message .error");
        string text = await message!.InnerTextAsync();
        Assert.Contains("did not accept your API key (401", text, StringComparison.Ordinal);
        Assert.Null(await page.EvaluateAsync<string?>("() => sessionStorage.getItem('interpmesh.apiKey')"));
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "wrong-key.png") });
        Assert.DoesNotContain("not-a-key", page.Url, StringComparison.Ordinal);

        problems.Clear();
        await page.FillAsync("#api-key", Mesh.AliceKey);
        await page.PressAsync("#api-key", "Enter");
        await page.WaitForSelectorAsync("table#jobs");
        // The first refresh of the list: rows, or the note that none match (the order of the tests decides which).
        await page.WaitForFunctionAsync("() => document.querySelector('#jobs tbody tr') !== null || document.querySelector('#jobs-note').textContent.includes('No jobs match')");
        Assert.DoesNotContain(Mesh.AliceKey, page.Url, StringComparison.Ordinal);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "jobs.png") });
        await page.GotoAsync(mesh.WebUrl + "/#/run");
        await page.WaitForSelectorAsync("#run-form");
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "run.png") });
        Assert.Empty(problems);
    }

    [Fact]
    public async Task The_attention_grid_of_an_induction_head_shows_what_a_run_capture_gives()
    {
        const string prompt = "t01 t02 t03 t04 t05 t06 t01 t02 t03 t04 t05 t06";
        const int layer = 1, head = 2;
        // The independent path: a gRPC Run capture of the same hook.
        var run = new RunRequest();
        run.Inputs.Add(new Input { Text = prompt });
        run.Captures.Add(new Capture { Hooks = { $"blocks.{layer}.attn.hook_pattern" } });
        var models = new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel);
        var chunks = new List<ActivationChunk>();
        using (var call = models.Run(run, Mesh.As(Mesh.AliceKey)))
        {
            await foreach (var r in call.ResponseStream.ReadAllAsync())
            {
                if (r.Activation is { } a)
                    chunks.Add(a);
            }
        }
        var data = chunks.OrderBy(c => c.Offset).SelectMany(c => c.Data.ToByteArray()).ToArray();
        var shape = chunks[0].Shape.Select(s => (int)s).ToArray();
        Assert.Equal(4, shape.Length);
        int nq = shape[2], nk = shape[3];
        float At(int q, int k) => BitConverter.ToSingle(data, (((head * nq) + q) * nk + k) * 4);

        var (playwright, browser) = await Chromium.LaunchAsync();
        using var _ = playwright;
        await using var __ = browser;
        var page = await browser.NewPageAsync();
        var problems = Chromium.Watch(page);
        await page.GotoAsync(mesh.WebUrl + "/");
        await page.EvaluateAsync("k => sessionStorage.setItem('interpmesh.apiKey', k)", Mesh.AliceKey);
        await page.GotoAsync(mesh.WebUrl + "/#/model?layer=1&prompt=" + Uri.EscapeDataString(prompt));
        await page.WaitForSelectorAsync("[data-info='nLayers']");
        await page.SelectOptionAsync("#layer", "1");
        await page.ClickAsync("#show-attention");
        await page.WaitForSelectorAsync("#attention-done");
        var cells = await page.EvalOnSelectorAllAsync<string[][]>($"table.grid[data-layer='{layer}'][data-head='{head}'] td[data-value]",
            "els => els.map(e => [e.dataset.q, e.dataset.k, e.dataset.value])");
        Assert.Equal(nq * nk, cells.Length);
        int checkedCells = 0;
        foreach (var c in cells)
        {
            int q = int.Parse(c[0], CultureInfo.InvariantCulture), k = int.Parse(c[1], CultureInfo.InvariantCulture);
            double v = double.Parse(c[2], CultureInfo.InvariantCulture);
            Assert.True(Math.Abs(v - At(q, k)) <= 1e-3, $"q {q} k {k}: page {v}, run {At(q, k)}");
            checkedCells++;
        }
        Assert.Equal(nq * nk, checkedCells);
        // An induction head: the second copy's tokens attend to the token after their first occurrence.
        // With BOS first, token i of the second copy (position 7 + i) attends to position 2 + i.
        Assert.True(At(9, 4) > 0.3, $"L1H2 from position 9 to 4: {At(9, 4)}");
        // Hovering a query token names where it attends most.
        await page.HoverAsync($"table.grid[data-head='{head}'] th[data-q='9']");
        var readout = await page.InnerTextAsync($"table.grid[data-head='{head}'] + .readout");
        Assert.Contains("attends most to", readout, StringComparison.Ordinal);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "model.png"), FullPage = true });
        Assert.Empty(problems);
    }

    [Fact]
    public async Task A_job_submitted_from_the_generated_form_completes_and_its_table_and_figure_render()
    {
        var (playwright, browser) = await Chromium.LaunchAsync();
        using var _ = playwright;
        await using var __ = browser;
        var page = await browser.NewPageAsync();
        await page.GotoAsync(mesh.WebUrl + "/");
        await page.EvaluateAsync("k => sessionStorage.setItem('interpmesh.apiKey', k)", Mesh.AliceKey);
        await page.GotoAsync(mesh.WebUrl + "/#/run?plugin=token-stats");
        await page.WaitForSelectorAsync("#param-texts");
        // The schema's default and description are in the form.
        Assert.Equal("blocks.*.hook_resid_post", await page.InputValueAsync("#param-hooks"));
        Assert.Contains("texts to run through the model", await page.InnerTextAsync("[data-field='texts']"), StringComparison.Ordinal);

        // A server validation message lands at the field it names.
        // (texts is required and left empty: the gateway validates the parameters against the schema at submit.)
        await page.ClickAsync("#submit-job");
        var fieldError = await page.WaitForSelectorAsync("[data-error-for='texts']:not(:empty), #form-error .error");
        Assert.True(await fieldError!.GetAttributeAsync("data-error-for") == "texts", "the server's message was not placed at the field: " + await fieldError.InnerTextAsync());
        Assert.Contains("texts", await fieldError.InnerTextAsync(), StringComparison.Ordinal);

        var problems = Chromium.Watch(page);
        await page.FillAsync("#param-hooks", "blocks.*.hook_resid_post");
        await page.FillAsync("#param-texts", "t01 t02 t03\nt04 t05 t01 t02");
        await page.ClickAsync("#submit-job");
        await page.WaitForSelectorAsync("[data-state='JOB_STATE_SUCCEEDED']", new() { Timeout = 60_000 });
        await page.WaitForSelectorAsync("table[data-table='norms'] tbody tr");
        string id = page.Url[(page.Url.IndexOf("#/jobs/", StringComparison.Ordinal) + 7)..];
        var job = await new AnalysisService.AnalysisServiceClient(mesh.Channel).GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(JobState.Succeeded, job.State);
        var rows = System.Text.Json.JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "norms").RowsJson).RootElement;
        var cells = await page.EvalOnSelectorAllAsync<string[][]>("table[data-table='norms'] tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.textContent))");
        Assert.Equal(rows.GetArrayLength(), cells.Length);
        for (int r = 0; r < cells.Length; r++)
        {
            Assert.Equal(rows[r][0].GetString(), cells[r][0]);
            Assert.True(Math.Abs(rows[r][1].GetDouble() - double.Parse(cells[r][1], CultureInfo.InvariantCulture)) <= 1e-4, $"row {r}: {cells[r][1]} vs {rows[r][1]}");
        }
        // The SVG figure decoded and drawn as an image.
        Assert.True(await page.EvalOnSelectorAsync<int>("figure[data-figure='norms'] img", "img => img.complete ? img.naturalWidth : 0") > 0);
        Assert.Contains("\"t01 t02 t03\"", await page.InnerTextAsync("#job-parameters"), StringComparison.Ordinal);
        await page.ScreenshotAsync(new() { Path = Path.Combine(Chromium.Screenshots, "job.png"), FullPage = true });

        // Listed on the jobs page, filtered by plugin and owner.
        await page.GotoAsync(mesh.WebUrl + "/#/jobs");
        await page.WaitForSelectorAsync($"tr[data-job='{id}']");
        await page.SelectOptionAsync("#filter-plugin", "token-stats");
        await page.FillAsync("#filter-owner", "nobody");
        await page.WaitForSelectorAsync("#jobs-note:has-text('No jobs match')");
        await page.FillAsync("#filter-owner", "alice");
        await page.WaitForSelectorAsync($"tr[data-job='{id}'] [data-state='JOB_STATE_SUCCEEDED']");
        Assert.Empty(problems);
    }
}
