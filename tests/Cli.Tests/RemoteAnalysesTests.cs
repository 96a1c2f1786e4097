using System.Text.Json;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Cli.Tests;

/// <summary>A model service (concepts) and a gateway with the built-in plugins and API keys.</summary>
public sealed class AnalysisMesh : IAsyncLifetime
{
    private WebApplication? service, gateway;
    private readonly string data = TempFolders.Create("interpmesh-cli-");

    public string Gateway { get; private set; } = "";

    public async Task InitializeAsync()
    {
        (service, var address) = await Mesh.StartModelServiceAsync(RepoPaths.Models("concepts"));
        (gateway, Gateway) = await Mesh.StartGatewayAsync([address], Path.Combine(RepoPaths.Root, "plugins"), data);
    }

    public async Task DisposeAsync()
    {
        await Mesh.StopAsync(gateway, service);
        TempFolders.Delete(data);
    }
}

/// <summary>`interpmesh plugins | run | jobs | artifacts` against a running gateway.</summary>
public sealed class RemoteAnalysesTests(AnalysisMesh mesh) : IClassFixture<AnalysisMesh>
{
    private string[] Remote(params string[] args) => [.. args, "--server", mesh.Gateway, "--key", Mesh.AliceKey];

    private static string Rows()
    {
        var rows = Enumerable.Range(0, 40).Select(i => new { text = $"the {(i % 3 == 0 ? "dog" : "cat")} is {(i % 2 == 0 ? "happy" : "sad")} . what a", label = i % 2 == 0 ? "positive" : "negative" });
        return JsonSerializer.Serialize(new { rows, hooks = new[] { "blocks.1.hook_resid_post" }, sparse = new { enabled = false }, save_prefix = "probes/cli" });
    }

    [Fact]
    public void Plugins_lists_the_built_in_analyses()
    {
        var r = CliRunner.Run(Remote("plugins", "--json"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        var ids = r.Json.GetProperty("plugins").EnumerateArray().Where(p => p.GetProperty("loaded").GetBoolean()).Select(p => p.GetProperty("id").GetString()).ToHashSet();
        Assert.Superset(new HashSet<string?> { "probing", "sae", "steering", "retrieval-heads", "circuits" }, ids);
    }

    [Fact]
    public void Run_streams_progress_prints_the_result_and_jobs_and_artifacts_find_it()
    {
        var run = CliRunner.Run(Remote("run", "probing", "--params-json", Rows(), "--json"));
        Assert.True(run.ExitCode == 0, run.Stderr + run.Stdout);
        Assert.Contains("] ", run.Stderr, StringComparison.Ordinal);                    // progress bars
        var job = run.Json;
        Assert.Equal("JOB_STATE_SUCCEEDED", job.GetProperty("state").GetString());
        string id = job.GetProperty("id").GetString()!;

        var text = CliRunner.Run(Remote("jobs", "result", id));
        Assert.True(text.ExitCode == 0, text.Stderr);
        Assert.Contains("per_hook (1 rows)", text.Stdout, StringComparison.Ordinal);
        Assert.Contains(id, CliRunner.Run(Remote("jobs", "list")).Stdout, StringComparison.Ordinal);

        var list = CliRunner.Run(Remote("artifacts", "list", "--prefix", "probes/cli/", "--json"));
        Assert.Equal("probes/cli/blocks.1.hook_resid_post", list.Json.GetProperty("artifacts")[0].GetProperty("name").GetString());
        string dir = TempFolders.Create("interpmesh-cli-art-");
        Assert.Equal(0, CliRunner.Run(Remote("artifacts", "get", "probes/cli/blocks.1.hook_resid_post", "--out", dir)).ExitCode);
        Assert.True(File.Exists(Path.Combine(dir, "tensors.safetensors")));
        // Round trip: upload the folder under a new name, then remove it.
        Assert.Equal(0, CliRunner.Run(Remote("artifacts", "put", "copies/probe", "--from", dir)).ExitCode);
        Assert.Contains("copies/probe", CliRunner.Run(Remote("artifacts", "list")).Stdout, StringComparison.Ordinal);
        var rm = CliRunner.Run("artifacts", "rm", "copies/probe", "--server", mesh.Gateway, "--key", Mesh.AdminKey);
        Assert.True(rm.ExitCode == 0, rm.Stderr);
        Assert.DoesNotContain("copies/probe", CliRunner.Run(Remote("artifacts", "list")).Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_with_report_writes_the_job_as_one_html_file()
    {
        string path = Path.Combine(TempFolders.Create("interpmesh-cli-report-"), "probe.html");
        var run = CliRunner.Run(Remote("run", "probing", "--params-json", Rows(), "--report", path));
        Assert.True(run.ExitCode == 0, run.Stderr + run.Stdout);
        Assert.Contains($"report: {path}", run.Stdout, StringComparison.Ordinal);
        string html = File.ReadAllText(path);
        Assert.Contains("<section id=\"job-", html, StringComparison.Ordinal);
        Assert.Contains("<caption>per_hook</caption>", html, StringComparison.Ordinal);
        Assert.Contains("alt=\"accuracy_by_layer\" src=\"data:image/svg+xml;base64,", html, StringComparison.Ordinal);
    }

    [Fact]
    public void Settings_come_from_the_command_line_then_the_environment_then_the_config_file()
    {
        string dir = TempFolders.Create("interpmesh-cli-config-");
        string config = Path.Combine(dir, "config.json");
        File.WriteAllText(config, JsonSerializer.Serialize(new { server = mesh.Gateway, apiKey = Mesh.AliceKey }));
        var fromFile = CliRunner.RunProcess(new Dictionary<string, string> { ["INTERPMESH_CONFIG"] = config }, "plugins");
        Assert.True(fromFile.ExitCode == 0, fromFile.Stderr);
        Assert.Contains("probing", fromFile.Stdout, StringComparison.Ordinal);

        var envWins = CliRunner.RunProcess(new Dictionary<string, string> { ["INTERPMESH_CONFIG"] = config, ["INTERPMESH_API_KEY"] = "not-a-key" }, "plugins");
        Assert.Equal(1, envWins.ExitCode);
        Assert.Contains("Unauthenticated", envWins.Stderr, StringComparison.Ordinal);

        var flagWins = CliRunner.RunProcess(new Dictionary<string, string> { ["INTERPMESH_CONFIG"] = config, ["INTERPMESH_API_KEY"] = "not-a-key" }, "plugins", "--key", Mesh.AliceKey);
        Assert.True(flagWins.ExitCode == 0, flagWins.Stderr);

        var shown = CliRunner.RunProcess(new Dictionary<string, string> { ["INTERPMESH_CONFIG"] = config, ["INTERPMESH_SERVER"] = "http://127.0.0.1:1" }, "config");
        Assert.Equal(0, shown.ExitCode);
        Assert.Matches(@"server\s+http://127\.0\.0\.1:1\s+environment \(INTERPMESH_SERVER\)", shown.Stdout);
        Assert.Matches(@"apiKey\s+\(set, \d+ characters\)\s+config file", shown.Stdout);
        Assert.DoesNotContain(Mesh.AliceKey, shown.Stdout, StringComparison.Ordinal);

        File.WriteAllText(config, """{"server": "http://127.0.0.1:1", "apikey": "x"}""");
        var bad = CliRunner.RunProcess(new Dictionary<string, string> { ["INTERPMESH_CONFIG"] = config }, "plugins");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("unknown setting \"apikey\"; settings: server, apiKey, model", bad.Stderr, StringComparison.Ordinal);
        Assert.Single(bad.Stderr.Trim().Split('\n'));                          // one line on stderr
    }

    [Fact]
    public void Help_shows_one_command_s_usage_and_exits_zero()
    {
        var help = CliRunner.Run("run", "--help");
        Assert.Equal(0, help.ExitCode);
        Assert.Contains("interpmesh run PLUGIN --server URL", help.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("interpmesh generate", help.Stdout, StringComparison.Ordinal);
        var all = CliRunner.Run("help");
        Assert.Equal(0, all.ExitCode);
        Assert.Contains("interpmesh demo", all.Stdout, StringComparison.Ordinal);
        Assert.Contains("INTERPMESH_SERVER", all.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Model_commands_go_through_the_gateway_with_a_key()
    {
        var info = CliRunner.Run("info", "--server", mesh.Gateway, "--key", Mesh.ReaderKey, "--model-name", "tiny", "--json");
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Equal("GPT2LMHeadModel", info.Json.GetProperty("architecture").GetString());
        var generate = CliRunner.Run("generate", "--server", mesh.Gateway, "--key", Mesh.AliceKey, "--prompt", "the dog is happy . what a", "--max-new-tokens", "2", "--json");
        Assert.True(generate.ExitCode == 0, generate.Stderr);
        Assert.Equal(2, generate.Json.GetProperty("generated_ids").GetArrayLength());
        var denied = CliRunner.Run("generate", "--server", mesh.Gateway, "--key", Mesh.ReaderKey, "--prompt", "the dog", "--max-new-tokens", "1");
        Assert.Equal(1, denied.ExitCode);
        Assert.Contains("lacks the 'analyze' role", denied.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Failures_exit_non_zero_with_what_went_wrong()
    {
        var bad = CliRunner.Run(Remote("run", "probing", "--params-json", """{"rows": []}"""));
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("FAILED (INVALID_ARGUMENT) the dataset is empty", bad.Stdout, StringComparison.Ordinal);

        var noKey = CliRunner.Run("plugins", "--server", mesh.Gateway);
        Assert.Equal(1, noKey.ExitCode);
        Assert.Contains("Unauthenticated", noKey.Stderr, StringComparison.Ordinal);

        var usage = CliRunner.Run("run", "--server", mesh.Gateway);
        Assert.Equal(2, usage.ExitCode);
        Assert.Contains("run needs a plugin id", usage.Stderr, StringComparison.Ordinal);
    }
}

/// <summary>`interpmesh up` as a user starts it: a separate process, stopped with Ctrl-C (SIGINT).</summary>
public sealed class UpProcessTests
{
    [Fact]
    public async Task Up_serves_the_gateway_with_the_built_in_plugins_and_stops_cleanly_on_ctrl_c()
    {
        int gatewayPort = Ports.Free(), modelPort = Ports.Free(), webPort = Ports.Free();
        string data = TempFolders.Create("interpmesh-up-");
        // Started through Debian's Python, which restores SIGINT's default before it execs `up` (same
        // process id): a test host started from a background shell job inherits SIGINT as ignored,
        // and .NET then installs no Ctrl-C handler in the child — as a user's `nohup` would intend.
        var psi = new System.Diagnostics.ProcessStartInfo("/usr/bin/python3",
            ["-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
             Path.Combine(AppContext.BaseDirectory, "interpmesh"), "up", "--grpc-port", gatewayPort.ToString(), "--web-port", webPort.ToString(), "--model-port", modelPort.ToString(), "--data", data])
        { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(psi)!;
        var lines = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var ready = new TaskCompletionSource<string>();
        var reader = Task.Run(async () =>
        {
            while (await process.StandardOutput.ReadLineAsync() is { } line)
            {
                lines.Enqueue(line);
                if (line.StartsWith("up: ", StringComparison.Ordinal))
                    ready.TrySetResult(line);
            }
        });
        // stderr is read as it comes: a child whose unread stderr pipe fills up blocks on its next log line.
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            Assert.True(await Task.WhenAny(ready.Task, Task.Delay(90_000)) == ready.Task, $"up did not report ready within 90 s: {string.Join(" | ", lines)}");
            Assert.Contains($"127.0.0.1:{gatewayPort}", await ready.Task, StringComparison.Ordinal);
            var plugins = CliRunner.Run("plugins", "--server", $"http://127.0.0.1:{gatewayPort}", "--json");
            Assert.True(plugins.ExitCode == 0, plugins.Stderr);
            Assert.Contains(plugins.Json.GetProperty("plugins").EnumerateArray(), p => p.GetProperty("id").GetString() == "probing" && p.GetProperty("loaded").GetBoolean());
            // The model is named after its folder (models/concepts), so artifacts carry a real model_name.
            Assert.Contains("model 'concepts'", await ready.Task, StringComparison.Ordinal);
            var info = CliRunner.Run("info", "--server", $"http://127.0.0.1:{gatewayPort}", "--model-name", "concepts", "--json");
            Assert.True(info.ExitCode == 0, info.Stderr);
            Assert.Equal(2, info.Json.GetProperty("n_layers").GetInt32());
            Assert.NotEqual(0, CliRunner.Run("info", "--server", $"http://127.0.0.1:{gatewayPort}", "--model-name", "local", "--json").ExitCode);
            // The REST line up prints, run as printed by curl: the same model over REST/JSON on the web port.
            string rest = lines.Single(l => l.TrimStart().StartsWith("REST:", StringComparison.Ordinal));
            Assert.Contains($"http://127.0.0.1:{webPort}/v1/model/info", rest, StringComparison.Ordinal);
            string command = rest.TrimStart()["REST:".Length..].Split(" (docs/", 2)[0].Trim();
            var curl = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("/bin/bash", ["-c", command]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
            string restOut = await curl.StandardOutput.ReadToEndAsync();
            await curl.WaitForExitAsync();
            Assert.True(curl.ExitCode == 0, $"{command}: {await curl.StandardError.ReadToEndAsync()}");
            using (var restInfo = System.Text.Json.JsonDocument.Parse(restOut))
                Assert.Equal(2, restInfo.RootElement.GetProperty("nLayers").GetInt32());
            // The console line: the web console's page at the web port's root, with its strict policy.
            string console = lines.Single(l => l.TrimStart().StartsWith("Console:", StringComparison.Ordinal));
            Assert.Contains($"http://127.0.0.1:{webPort}/ ", console, StringComparison.Ordinal);
            using (var http = new HttpClient())
            using (var page = await http.GetAsync($"http://127.0.0.1:{webPort}/"))
            {
                Assert.Equal(System.Net.HttpStatusCode.OK, page.StatusCode);
                Assert.Contains("default-src 'self'", string.Join(";", page.Headers.GetValues("Content-Security-Policy")), StringComparison.Ordinal);
                Assert.Contains("/console/app.js", await page.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            }
            using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", process.Id.ToString()])!)
                await kill.WaitForExitAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                // Say how far the shutdown got ("stopping" is printed when it starts), and what it logged.
                process.Kill();
                Assert.Fail($"up did not exit within 60 s of Ctrl-C; stdout: {string.Join(" | ", lines)}; stderr: {await stderr}");
            }
            await reader;
            Assert.Equal(0, process.ExitCode);
            Assert.Contains("stopping", lines);
            Assert.Contains("stopped", lines);
        }
        finally
        {
            if (!process.HasExited)
                process.Kill(entireProcessTree: true);
            TempFolders.Delete(data);
        }
    }
}

/// <summary>`interpmesh demo --keep`: after the analyses the mesh and its web console stay up until Ctrl-C.</summary>
public sealed class DemoKeepTests
{
    [Fact]
    public async Task Demo_keep_prints_the_console_url_and_serves_it_until_ctrl_c()
    {
        string folder = TempFolders.Create("interpmesh-demo-keep-");
        // Through Debian's Python, which restores SIGINT's default before exec (see UpProcessTests).
        var psi = new System.Diagnostics.ProcessStartInfo("/usr/bin/python3",
            ["-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
             Path.Combine(AppContext.BaseDirectory, "interpmesh"), "demo", "--quick", "--keep", "--report", Path.Combine(folder, "report.html")])
        { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(psi)!;
        var lines = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var kept = new TaskCompletionSource();
        var reader = Task.Run(async () =>
        {
            while (await process.StandardOutput.ReadLineAsync() is { } line)
            {
                lines.Enqueue(line);
                if (line.StartsWith("keeping the mesh running", StringComparison.Ordinal))
                    kept.TrySetResult();
            }
        });
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            Assert.True(await Task.WhenAny(kept.Task, Task.Delay(300_000)) == kept.Task, $"demo --keep did not reach its keep line: {string.Join(" | ", lines)}");
            string console = lines.Single(l => l.StartsWith("console: ", StringComparison.Ordinal))["console: ".Length..].Split(' ')[0];
            Assert.StartsWith("http://127.0.0.1:", console, StringComparison.Ordinal);
            Assert.Contains("all analyses succeeded", string.Join("\n", lines), StringComparison.Ordinal);
            // After the analyses, the console still answers: the page with its security policy.
            using var http = new HttpClient();
            using var page = await http.GetAsync(console);
            Assert.Equal(System.Net.HttpStatusCode.OK, page.StatusCode);
            Assert.Contains("default-src 'self'", string.Join(";", page.Headers.GetValues("Content-Security-Policy")), StringComparison.Ordinal);
            using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", process.Id.ToString()])!)
                await kill.WaitForExitAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await process.WaitForExitAsync(timeout.Token);
            await reader;
            Assert.Contains("stopped", lines);
            Assert.Equal(0, process.ExitCode);
        }
        finally
        {
            if (!process.HasExited)
                process.Kill(entireProcessTree: true);
            TempFolders.Delete(folder);
        }
    }
}
