using System.Diagnostics;
using System.Net.Http;
using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.ModelService.Tests;

/// <summary>Prometheus metrics on the separate plain-HTTP port.</summary>
public sealed class MetricsTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    private async Task RunOnce(params string[] hooks)
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { 1, 403, 407, 261, 378 } } });
        if (hooks.Length > 0)
            request.Captures.Add(new Capture { Hooks = { hooks } });
        using var call = server.Client.Run(request);
        await foreach (var _ in call.ResponseStream.ReadAllAsync())
        {
        }
    }

    [Fact]
    public async Task Metrics_count_requests_by_method_and_status_and_bytes_streamed()
    {
        await RunOnce("blocks.*.hook_resid_post");
        await Assert.ThrowsAsync<RpcException>(() => RunOnce("blocks.0.nope"));
        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsUrl);
        Assert.Contains("interpmesh_requests_total{", text);
        Assert.Matches("interpmesh_requests_total\\{[^}]*method=\"Run\"[^}]*status=\"OK\"", text);
        Assert.Matches("interpmesh_requests_total\\{[^}]*method=\"Run\"[^}]*status=\"InvalidArgument\"", text);
        Assert.Contains("interpmesh_request_duration_seconds_bucket", text);
        Assert.Contains("interpmesh_activations_bytes_total", text);
        Assert.Contains("interpmesh_batch_size", text);
        Assert.Contains("interpmesh_queue_depth", text);
        Assert.Contains("interpmesh_tokens_total", text);
        Assert.DoesNotContain("403", text.Split('\n').Where(l => l.StartsWith("interpmesh", StringComparison.Ordinal)).Select(l => l.Split(' ')[0]).Aggregate("", string.Concat));
    }

    [Fact]
    public async Task The_grpc_port_does_not_serve_metrics_and_the_metrics_port_does_not_serve_grpc()
    {
        using var http = new HttpClient();
        var response = await http.GetAsync(server.Address + "/metrics");
        Assert.False(response.IsSuccessStatusCode && (await response.Content.ReadAsStringAsync()).Contains("interpmesh_", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_real_prometheus_server_scrapes_the_endpoint()
    {
        string prometheus = "/usr/bin/prometheus";
        Assert.True(File.Exists(prometheus), "Debian's prometheus is not installed: .ci/run installs it (apt-get install prometheus); run `sudo apt-get install -y prometheus` locally");
        await RunOnce();
        string dir = Path.Combine(Path.GetTempPath(), "interpmesh-prom-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        int webPort = Ports.Free();
        File.WriteAllText(Path.Combine(dir, "prometheus.yml"), $"""
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: interpmesh-modelservice
                static_configs:
                  - targets: ["127.0.0.1:{server.MetricsPort}"]
            """);
        using var process = Process.Start(new ProcessStartInfo(prometheus,
        [
            $"--config.file={Path.Combine(dir, "prometheus.yml")}", $"--storage.tsdb.path={Path.Combine(dir, "data")}",
            $"--web.listen-address=127.0.0.1:{webPort}",
        ]) { RedirectStandardError = true, RedirectStandardOutput = true })!;
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) log.Enqueue(e.Data); };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) log.Enqueue(e.Data); };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        try
        {
            using var http = new HttpClient();
            string query = $"http://127.0.0.1:{webPort}/api/v1/query?query=" + Uri.EscapeDataString("interpmesh_requests_total{method=\"Run\",status=\"OK\"}");
            string body = "";
            // Generous: Prometheus starts slowly on a loaded 2-core machine.
            for (var deadline = DateTime.UtcNow.AddSeconds(180); DateTime.UtcNow < deadline; await Task.Delay(500))
            {
                try
                {
                    body = await http.GetStringAsync(query);
                    if (body.Contains("\"result\":[{", StringComparison.Ordinal))
                        break;
                }
                catch (HttpRequestException)
                {
                }
            }
            if (!body.Contains("\"result\":[{", StringComparison.Ordinal))
            {
                string targets = "";
                try
                {
                    targets = await http.GetStringAsync($"http://127.0.0.1:{webPort}/api/v1/targets");
                }
                catch (HttpRequestException e)
                {
                    targets = e.Message;
                }
                Assert.Fail($"Prometheus never returned the series. Last query answer: {body}\nTargets: {targets}\nPrometheus log tail:\n{string.Join('\n', log.TakeLast(15))}");
            }
            Assert.Contains("interpmesh-modelservice", body);
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Directory.Delete(dir, recursive: true);
        }
    }
}
