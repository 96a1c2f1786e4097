using System.Diagnostics;
using Xunit;

namespace InterpMesh.Tests;

/// <summary>Runs Debian's real Prometheus against a metrics port and waits until a query has a result.</summary>
internal static class PrometheusScrape
{
    public const string Binary = "/usr/bin/prometheus";

    /// <summary>
    /// Starts Prometheus scraping 127.0.0.1:<paramref name="metricsPort"/> every second as job
    /// <paramref name="job"/>, polls <paramref name="query"/> until it returns a series, and returns
    /// the query's answer. Fails with Prometheus' targets and log when it never does.
    /// </summary>
    public static async Task<string> QueryAsync(int metricsPort, string job, string query)
    {
        Assert.True(File.Exists(Binary), "Debian's prometheus is not installed: .ci/run installs it (apt-get install prometheus); run `sudo apt-get install -y prometheus` locally");
        string dir = Path.Combine(Path.GetTempPath(), "interpmesh-prom-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        int webPort = Ports.Free();
        File.WriteAllText(Path.Combine(dir, "prometheus.yml"), $"""
            global:
              scrape_interval: 1s
            scrape_configs:
              - job_name: {job}
                static_configs:
                  - targets: ["127.0.0.1:{metricsPort}"]
            """);
        using var process = Process.Start(new ProcessStartInfo(Binary,
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
            string url = $"http://127.0.0.1:{webPort}/api/v1/query?query=" + Uri.EscapeDataString(query);
            string body = "";
            // Generous: Prometheus starts slowly on a loaded 2-core machine.
            for (var deadline = DateTime.UtcNow.AddSeconds(180); DateTime.UtcNow < deadline; await Task.Delay(500))
            {
                try
                {
                    body = await http.GetStringAsync(url);
                    if (body.Contains("\"result\":[{", StringComparison.Ordinal))
                        return body;
                }
                catch (HttpRequestException)
                {
                }
            }
            string targets;
            try
            {
                targets = await http.GetStringAsync($"http://127.0.0.1:{webPort}/api/v1/targets");
            }
            catch (HttpRequestException e)
            {
                targets = e.Message;
            }
            Assert.Fail($"Prometheus never returned the series. Last query answer: {body}\nTargets: {targets}\nPrometheus log tail:\n{string.Join('\n', log.TakeLast(15))}");
            return body;
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Directory.Delete(dir, recursive: true);
        }
    }
}
