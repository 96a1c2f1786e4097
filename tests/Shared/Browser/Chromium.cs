using Microsoft.Playwright;

namespace InterpMesh.Tests;

/// <summary>
/// Debian's Chromium driven headless by Playwright (no browser download; .ci/run installs the
/// package), for the console's and the report's browser tests.
/// </summary>
public static class Chromium
{
    private const string Executable = "/usr/bin/chromium";

    /// <summary>Starts the browser; dispose both (the browser first).</summary>
    public static async Task<(IPlaywright Playwright, IBrowser Browser)> LaunchAsync()
    {
        Assert.True(File.Exists(Executable), "Debian's chromium is missing: `apt-get install chromium` (.ci/run installs it)");
        var playwright = await Playwright.CreateAsync();
        var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = Executable, Headless = true, Args = ["--no-sandbox", "--disable-gpu"] });
        return (playwright, browser);
    }

    /// <summary>Collects the page's script errors, console errors and failed requests (a test asserts the list stays empty).</summary>
    public static List<string> Watch(IPage page)
    {
        var problems = new List<string>();
        page.PageError += (_, e) => problems.Add($"page error: {e}");
        page.Console += (_, m) => { if (m.Type == "error") problems.Add($"console error: {m.Text}"); };
        page.RequestFailed += (_, r) => problems.Add($"failed request: {r.Url} {r.Failure}");
        return problems;
    }

    /// <summary>The folder screenshots go to (<c>console-screenshots</c> beside the test assembly; CI keeps it as an artifact).</summary>
    public static string Screenshots => Directory.CreateDirectory(Path.Combine(AppContext.BaseDirectory, "console-screenshots")).FullName;
}
