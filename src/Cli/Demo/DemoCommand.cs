using System.CommandLine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Report;
using InterpMesh.Cli.Serve;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Cli.Demo;

/// <summary>
/// <c>interpmesh demo</c>: brings up the local mesh with the three toy models, runs the four
/// plugins through the gateway, prints what each found, writes one self-contained HTML report and
/// shuts the mesh down. Exit code 0 only when every analysis succeeded.
/// </summary>
internal static class DemoCommand
{
    public static Command Create(CliConsole console)
    {
        var report = CliOptions.Text("--report", "HTML report path", "FILE.html");
        report.DefaultValueFactory = _ => "interpmesh-report.html";
        var quick = CliOptions.Flag("--quick", "a smaller configuration");
        var data = CliOptions.Text("--data", "keep the analyses' artifacts in this folder (default: a temporary one, removed)", "DIR");
        var threads = CliOptions.Int("--threads", "libtorch intra-op threads per model service (default: all cores)", min: 1);
        var models = CliOptions.Text("--models", "folder holding concepts/, retrieval/ and induction/ (default: the checkout's models/)", "DIR");
        var plugins = CliOptions.Text("--plugins", "plugins folder (default: the checkout's plugins/)", "DIR");
        var json = CliOptions.Flag("--json", "JSON output");
        var keep = CliOptions.Flag("--keep", "keep the mesh and its web console running after the analyses, until Ctrl-C");
        var command = new Command("demo", "Runs the local mesh and every analysis on the toy models; writes an HTML report.") { report, quick, data, threads, models, plugins, json, keep };
        command.SetAction(r => Run(Path.GetFullPath(r.GetRequiredValue(report)), r.GetValue(quick), r.GetValue(data), r.GetValue(threads) ?? 0, r.GetValue(models), r.GetValue(plugins),
            r.GetValue(json), r.GetValue(keep), console.Out, console.Error));
        return command;
    }

    private static int Run(string reportPath, bool quick, string? dataArg, int threads, string? modelsArg, string? pluginsArg, bool json, bool keep, TextWriter stdout, TextWriter stderr)
    {
        string? repo = LocalMesh.RepositoryOrNull();
        string models = Path.GetFullPath(modelsArg ?? (repo is null ? throw new UsageException("--models DIR (holding concepts/, retrieval/ and induction/) is required outside a checkout") : Path.Combine(repo, "models")));
        string plugins = Path.GetFullPath(pluginsArg ?? (repo is null ? throw new UsageException("--plugins DIR is required outside a checkout") : Path.Combine(repo, "plugins")));
        string[] names = ["concepts", "retrieval", "induction"];
        foreach (var name in names)
        {
            if (!Directory.Exists(Path.Combine(models, name)))
                throw new UsageException($"the toy model '{name}' is not in {models}; pass --models DIR holding concepts/, retrieval/ and induction/");
        }
        // The demo's artifacts (probes, the SAE, the steering vector) go to a temporary folder unless --data keeps them.
        string data = dataArg is null ? Path.Combine(Path.GetTempPath(), "interpmesh-demo-" + Guid.NewGuid().ToString("N")) : Path.GetFullPath(dataArg);
        var clock = Stopwatch.StartNew();
        var apps = new List<WebApplication>();
        // When stdout carries JSON, the human-readable tables go to stderr with the progress.
        var text = json ? stderr : stdout;
        try
        {
            var endpoints = new Dictionary<string, string>();
            foreach (var name in names)
            {
                var app = LocalMesh.StartModelService(Path.Combine(models, name), threads);
                apps.Add(app);
                endpoints[name] = app.Urls.First();
            }
            // The web console (and REST/JSON) on an HTTP/1.1 endpoint of its own, on a free loopback port.
            string web = $"http://127.0.0.1:{LocalMesh.FreePort("127.0.0.1")}";
            var (gateway, worker) = LocalMesh.StartGateway(endpoints, plugins, data,
                extra: new() { ["Kestrel:Endpoints:Web:Url"] = web, ["Kestrel:Endpoints:Web:Protocols"] = "Http1" });
            // Stopped in this order: the gateway, the worker, then the model services.
            apps.Insert(0, worker);
            apps.Insert(0, gateway);
            string address = gateway.Urls.First(u => u != web);
            text.WriteLine($"demo: gateway {address} serving {string.Join(", ", names)}, an analysis worker with the plugins in {plugins}{(quick ? " (quick configuration)" : "")}");
            text.WriteLine($"console: {web}/ (the web console; docs/console.md){(keep ? "" : " — until the demo ends; --keep keeps it running")}");
            var report = new HtmlReport("InterpMesh demo report");
            using var demo = new DemoAnalyses(address, report, text, stderr, quick);
            demo.Probing();
            demo.Sae();
            demo.Steering();
            demo.Retrieval();
            demo.Induction();
            demo.Circuits();
            string saved = report.Save(reportPath);
            double seconds = clock.Elapsed.TotalSeconds;
            bool ok = demo.AllSucceeded;
            if (json)
            {
                stdout.WriteLine(new JsonObject { ["report"] = saved, ["seconds"] = Math.Round(seconds, 1), ["succeeded"] = ok, ["analyses"] = demo.Results }.ToJsonString());
            }
            else
            {
                stdout.WriteLine($"\n{(ok ? "all analyses succeeded" : "some analyses FAILED (see above)")} in {seconds:0} s; data in {(dataArg is null ? "a temporary folder (removed; --data DIR keeps it)" : data)}");
                stdout.WriteLine($"report: {saved}");
            }
            if (!ok)
                stderr.WriteLine("error: at least one analysis failed; the report says which and why");
            if (keep)
            {
                text.WriteLine($"keeping the mesh running: the console at {web}/, the gateway at {address}; Ctrl-C stops");
                text.Flush();
                gateway.WaitForShutdownAsync().GetAwaiter().GetResult();
                text.WriteLine("stopped");
            }
            return ok ? 0 : 1;
        }
        finally
        {
            foreach (var app in apps)
                LocalMesh.Stop(app);
            if (dataArg is null && Directory.Exists(data))
                Directory.Delete(data, recursive: true);
        }
    }
}
