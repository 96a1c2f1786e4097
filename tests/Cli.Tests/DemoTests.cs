using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Playwright;

namespace InterpMesh.Cli.Tests;

/// <summary>Runs <c>interpmesh demo</c> once (its default configuration), as a newcomer would.</summary>
public sealed class DemoRun : IDisposable
{
    public string Folder { get; } = TempFolders.Create("interpmesh-demo-test-");
    public string ReportPath => Path.Combine(Folder, "out", "report.html");
    internal CliRunner.Result Result { get; }

    public DemoRun()
    {
        Result = CliRunner.Run("demo", "--report", ReportPath, "--json");
    }

    public void Dispose() => TempFolders.Delete(Folder);
}

/// <summary>
/// The demo end to end: the local mesh with three toy models, the four plugins through the gateway,
/// their findings checked against the toy models' cards, and the HTML report's sections.
/// </summary>
public sealed class DemoTests(DemoRun demo) : IClassFixture<DemoRun>
{
    private JsonNode Findings(string analysis)
    {
        var a = JsonNode.Parse(demo.Result.Stdout)!["analyses"]![analysis]!;
        Assert.True(a["state"]!.GetValue<string>() == "succeeded", $"{analysis}: {a["error"]}");
        return a["findings"]!;
    }

    private static HashSet<string> CardHeads(string model, string role) =>
        [.. JsonNode.Parse(File.ReadAllText(RepoPaths.Models($"{model}/mechanism.json")))!["heads"]!.AsArray()
            .Where(h => h!["role"]!.GetValue<string>().StartsWith(role, StringComparison.Ordinal)).Select(h => h!["label"]!.GetValue<string>())];

    [Fact]
    public void The_demo_succeeds_and_every_analysis_finds_what_the_toy_models_cards_say()
    {
        Assert.True(demo.Result.ExitCode == 0, demo.Result.Stderr);
        var summary = JsonNode.Parse(demo.Result.Stdout)!;
        Assert.True(summary["succeeded"]!.GetValue<bool>());
        Assert.Equal(demo.ReportPath, summary["report"]!.GetValue<string>());

        // Probing: sentiment is linearly readable at every hook (the concepts card: from layer 0).
        var probing = Findings("probing");
        foreach (var (hook, accuracy) in probing["accuracy_by_hook"]!.AsObject())
            Assert.True(accuracy!.GetValue<double>() >= 0.95, $"{hook}: {accuracy}");
        Assert.Equal(0, probing["concept_depth"]!["blocks.*.hook_resid_post"]!["layer"]!.GetValue<int>());

        // SAE: reconstructs the stream and the loss (thresholds as in docs/plugins/sae.md).
        var sae = Findings("sae");
        Assert.True(sae["explained_variance"]!.GetValue<double>() >= 0.8, $"EV {sae["explained_variance"]}");
        Assert.True(sae["ce_loss_recovered"]!.GetValue<double>() >= 0.8, $"CE recovered {sae["ce_loss_recovered"]}");
        Assert.NotEmpty(sae["features_shown"]!.AsArray());

        // Steering: the logit difference rises with the coefficient and flips the continuation's sentiment.
        var steering = Findings("steering");
        var diffs = steering["logit_diff_by_coefficient"]!.AsObject().Select(kv => kv.Value!.GetValue<double>()).ToList();
        Assert.True(diffs.Zip(diffs.Skip(1)).All(p => p.Second > p.First), string.Join(", ", diffs));
        var share = steering["target_share_by_coefficient"]!.AsObject().Select(kv => kv.Value!.GetValue<double>()).ToList();
        Assert.True(share[0] < 0.5 && share[^1] > 0.5, string.Join(", ", share));

        // Retrieval: the card's retrieval heads are found, and ablating them breaks recall more than random heads.
        var retrieval = Findings("retrieval");
        var found = retrieval["retrieval_heads"]!.AsArray().Select(h => h!.GetValue<string>()).ToHashSet();
        Assert.Superset(CardHeads("retrieval", "retrieval"), found);
        // Top 3 heads vs the mean of five random draws of 3 others (measured 0.73 vs 0.39 with the full grid).
        Assert.True(retrieval["ablation"]!["drop_top"]!.GetValue<double>() >= retrieval["ablation"]!["drop_random"]!.GetValue<double>() + 0.2,
            retrieval["ablation"]!.ToJsonString());

        // Induction: the top induction head is one of the card's, and so is the top previous-token head.
        var induction = Findings("induction");
        Assert.Contains(induction["top_induction_heads"]!.AsArray()[0]!.GetValue<string>(), CardHeads("induction", "induction"));
        Assert.Contains(induction["top_previous_token_heads"]!.AsArray()[0]!.GetValue<string>(), CardHeads("induction", "previous-token"));
        Assert.Null(induction["attention_pattern_error"]);

        // Circuits: patching puts the card's induction heads first; the previous-token heads reach them
        // through their keys (K-composition) far more than through queries or values; attribution
        // patching ranks like real patching; DLA's parts add up; the lens's last layer is the model's logits.
        var circuits = Findings("circuits");
        Assert.Equal(CardHeads("induction", "induction").Order(), circuits["top_heads"]!.AsArray().Select(h => h!.GetValue<string>()).Order());
        var byInput = circuits["layer0_to_layer1_by_input"]!;
        double k = byInput["k"]!.GetValue<double>();
        Assert.True(k > 0.2 && k > 5 * Math.Abs(byInput["q"]!.GetValue<double>()) && k > 5 * Math.Abs(byInput["v"]!.GetValue<double>()), byInput.ToJsonString());
        Assert.True(circuits["attribution_spearman"]!.GetValue<double>() >= 0.5, circuits.ToJsonString());
        Assert.True(circuits["dla_max_abs_error"]!.GetValue<double>() < 1e-4, circuits.ToJsonString());
        Assert.True(circuits["lens_last_layer_max_abs_diff"]!.GetValue<double>() <= 1e-4, circuits.ToJsonString());
    }

    [Fact]
    public void The_report_is_one_self_contained_file_with_every_section()
    {
        Assert.True(demo.Result.ExitCode == 0, demo.Result.Stderr);
        string html = File.ReadAllText(demo.ReportPath);
        foreach (var section in new[] { "probing", "sae", "steering", "retrieval", "induction", "circuits" })
            Assert.Contains($"<section id=\"{section}\">", html, StringComparison.Ordinal);
        // The figures each section promises: plugin figures (data-URI images) and the report's own charts.
        foreach (var figure in new[] { "accuracy_by_layer", "f1_by_k", "retrieval_heatmap", "induction_heatmap", "previous_token_heatmap" })
            Assert.Contains($"alt=\"{figure}\"", html, StringComparison.Ordinal);
        foreach (var chart in new[] { "Training loss", "Explained variance and dead latents", "Coefficient sweep", "Recall with heads ablated", "Attention pattern of L1H" })
            Assert.Contains($"aria-label=\"{chart}", html, StringComparison.Ordinal);
        Assert.Contains("class=\"tok\"", html, StringComparison.Ordinal);               // top contexts highlighted per token
        Assert.Contains("Sample generations", html, StringComparison.Ordinal);
        // Nothing is fetched: no scripts, no external URLs (the only http: text is the SVG namespace).
        Assert.DoesNotContain("<script", html, StringComparison.OrdinalIgnoreCase);
        var external = Regex.Matches(html, @"(?:src|href)\s*=\s*""(?!data:|#)([^""]*)""").Select(m => m.Groups[1].Value).ToList();
        Assert.Empty(external);
        Assert.Empty(Regex.Matches(html, @"https?://(?!www\.w3\.org/2000/svg)"));
    }

    [Fact]
    public void Without_the_toy_models_the_demo_says_which_folder_to_pass()
    {
        var r = CliRunner.Run("demo", "--models", demo.Folder);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("the toy model 'concepts' is not in", r.Stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// Opens the report in Debian's headless Chromium (installed by .ci/run; Playwright drives it, no
    /// browser download), takes a screenshot and checks every figure has rendered with a size.
    /// </summary>
    [Fact]
    public async Task The_report_renders_in_headless_chromium_with_every_figure_and_no_console_errors()
    {
        Assert.True(demo.Result.ExitCode == 0, demo.Result.Stderr);
        const string chromium = "/usr/bin/chromium";
        Assert.True(File.Exists(chromium), "Debian's chromium is missing: `apt-get install chromium` (.ci/run installs it)");
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox", "--disable-gpu"] });
        var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1200, Height = 900 } });
        var problems = new List<string>();
        page.Console += (_, m) =>
        {
            if (m.Type is "error" or "warning")
                problems.Add($"console {m.Type}: {m.Text}");
        };
        page.PageError += (_, e) => problems.Add($"page error: {e}");
        page.RequestFailed += (_, r) => problems.Add($"request failed: {r.Url}");
        var requests = new List<string>();
        page.Request += (_, r) => requests.Add(r.Url);
        await page.GotoAsync(new Uri(demo.ReportPath).AbsoluteUri, new() { WaitUntil = WaitUntilState.Load });

        string shot = Path.Combine(demo.Folder, "report.png");
        await page.ScreenshotAsync(new() { Path = shot, FullPage = true });
        Assert.True(new FileInfo(shot).Length > 50_000, "the screenshot is suspiciously small");

        var figures = await page.EvaluateAsync<JsonElement>("""
            () => [...document.querySelectorAll('figure > svg, figure > img')].map(e => {
              const r = e.getBoundingClientRect();
              return { tag: e.tagName.toLowerCase(), label: e.getAttribute('aria-label') || e.getAttribute('alt'), w: r.width, h: r.height,
                       decoded: e.tagName === 'IMG' ? (e.complete && e.naturalWidth > 0) : e.childElementCount > 3 };
            })
            """);
        var list = figures.EnumerateArray().ToList();
        Assert.True(list.Count >= 12, $"{list.Count} figures");
        Assert.Contains(list, f => f.GetProperty("tag").GetString() == "img");
        Assert.Contains(list, f => f.GetProperty("tag").GetString() == "svg");
        foreach (var f in list)
        {
            string label = f.GetProperty("label").GetString() ?? "?";
            Assert.True(f.GetProperty("w").GetDouble() > 50 && f.GetProperty("h").GetDouble() > 50, $"{label} has no size");
            Assert.True(f.GetProperty("decoded").GetBoolean(), $"{label} did not render");
        }
        Assert.Empty(problems);
        Assert.All(requests, u => Assert.True(u.StartsWith("file:", StringComparison.Ordinal) || u.StartsWith("data:", StringComparison.Ordinal), $"the report fetched {u}"));
    }
}
