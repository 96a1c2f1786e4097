using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Report;
using InterpMesh.Client;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Cli.Remote;

/// <summary>
/// Analyses through a gateway: <c>plugins</c>, <c>run</c>, <c>jobs</c>, <c>artifacts</c>. Every
/// command takes <c>--server URL</c> and, when the gateway has auth on, <c>--key KEY</c> (or the
/// <c>INTERPMESH_API_KEY</c> environment variable). Progress goes to stderr; results to stdout
/// (human-readable, or JSON with <c>--json</c>).
/// </summary>
internal static class RemoteAnalyses
{
    private static MeshClient Connect(CliArgs args, CliSettings? settings = null)
    {
        settings ??= CliSettings.Load();
        string url = args.Text("server") ?? settings.Server
            ?? throw new UsageException($"--server is required (the gateway's address, e.g. --server http://127.0.0.1:50050), or set INTERPMESH_SERVER or \"server\" in {settings.ConfigPath}");
        return RemoteModel.Connect(new RemoteModel.RemoteTarget(url, args.Text("key") ?? settings.ApiKey, null));
    }

    private static readonly JsonFormatter Formatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));

    public static int Plugins(CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        using var c = Connect(args);
        args.RejectUnknown("plugins");
        var list = RemoteModel.Call(() => c.ListPluginsAsync().GetAwaiter().GetResult());
        if (json)
        {
            stdout.WriteLine(Formatter.Format(list));
            return 0;
        }
        Terminal.Table(stdout, ["plugin", "version", "description"],
            list.Plugins.Select(p => p.Loaded ? new[] { p.Id, p.Version, p.Description } : [p.Id, "NOT LOADED", p.Error]),
            row => row[1] == "NOT LOADED" ? $"  {row[0],-18} NOT LOADED: {row[2]}" : $"  {row[0],-18} {row[1],-8} {row[2]}");
        return 0;
    }

    public static int Run(string plugin, CliArgs args, TextWriter stdout, TextWriter stderr)
    {
        bool json = args.Flag("json");
        string parameters = args.Text("params") is { } file ? File.ReadAllText(file) : args.Text("params-json") ?? "{}";
        var settings = CliSettings.Load();
        var request = new AnalysisRequest { Plugin = plugin, Model = args.Text("model") ?? settings.Model ?? "", ParametersJson = parameters, TimeoutSeconds = args.Int("timeout", min: 0) ?? 0 };
        string? report = args.Text("report");
        using var c = Connect(args, settings);
        args.RejectUnknown("run");
        return Report(Follow(progress => c.RunAnalysisAsync(request, progress), stderr), json, stdout, stderr, report);
    }

    /// <summary>Follows a job to its end: its progress on stderr (<see cref="Terminal.WithProgress"/>), the final record returned.</summary>
    public static Job Follow(Func<IProgress<Progress>, Task<Job>> follow, TextWriter stderr, string label = "") => RemoteModel.Call(() =>
        Terminal.WithProgress(stderr, label, update => follow(new Reporter(update)).GetAwaiter().GetResult()));

    /// <summary>Progress events passed on as they arrive (on the caller's thread, not a captured context).</summary>
    private sealed class Reporter(Action<double, string> update) : IProgress<Progress>
    {
        public void Report(Progress value) => update(value.Fraction, value.Message);
    }

    private static int Report(Job job, bool json, TextWriter stdout, TextWriter stderr, string? reportPath = null)
    {
        if (reportPath is not null)
        {
            var html = new HtmlReport($"{job.Plugin} job {job.Id}");
            html.Job(job);
            // With --json, stdout stays one JSON document; the report's path goes to stderr.
            (json ? stderr : stdout).WriteLine($"report: {html.Save(reportPath)}");
        }
        if (json)
            stdout.WriteLine(Formatter.Format(job));
        else
        {
            stdout.WriteLine($"{job.Plugin} {job.Id}: {job.State.ToString().ToUpperInvariant()}{(job.Error.Length > 0 ? $" ({job.ErrorCode}) {job.Error}" : "")}");
            if (job.Result is { } r)
            {
                stdout.WriteLine(JsonNode.Parse(r.SummaryJson)!.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                foreach (var t in r.Tables)
                {
                    var rows = JsonNode.Parse(t.RowsJson)!.AsArray();
                    stdout.WriteLine($"\n{t.Name} ({rows.Count} rows)\n  {string.Join(" | ", t.Columns)}");
                    foreach (var row in rows.Take(10))
                        stdout.WriteLine("  " + string.Join(" | ", row!.AsArray().Select(v => v is JsonValue x && x.TryGetValue<double>(out var d) ? d.ToString("0.####", System.Globalization.CultureInfo.InvariantCulture) : v?.ToJsonString() ?? "")));
                }
                foreach (var a in r.Artifacts)
                    stdout.WriteLine($"artifact: {a}");
                foreach (var f in r.Figures)
                    stdout.WriteLine($"figure: {f.Name} ({f.MediaType}, {f.Content.Length} bytes)");
            }
        }
        return job.State == JobState.Succeeded ? 0 : 1;
    }

    public static int Jobs(string verb, string? id, CliArgs args, TextWriter stdout, TextWriter stderr)
    {
        bool json = args.Flag("json");
        using var c = Connect(args);
        string plugin = args.Text("plugin") ?? "";
        string? report = verb is "result" or "watch" ? args.Text("report") : null;
        args.RejectUnknown($"jobs {verb}");
        string Need() => id ?? throw new UsageException($"jobs {verb} needs a job id");
        switch (verb)
        {
            case "list":
                var list = RemoteModel.Call(() => c.ListJobsAsync(plugin).GetAwaiter().GetResult());
                if (json)
                    stdout.WriteLine(Formatter.Format(list));
                else
                    Terminal.Table(stdout, ["id", "plugin", "state", "progress", "owner", "error"],
                        list.Jobs.Select(j => new[] { j.Id, j.Plugin, j.State.ToString().ToUpperInvariant(), j.Progress.ToString("P0", System.Globalization.CultureInfo.CurrentCulture), j.Owner, j.Error }),
                        row => $"  {row[0]}  {row[1],-16} {row[2],-12} {row[3],5}  {row[4]}  {row[5]}");
                return 0;
            case "result":
                return Report(RemoteModel.Call(() => c.GetJobAsync(Need()).GetAwaiter().GetResult()), json, stdout, stderr, report);
            case "cancel":
                var cancelled = RemoteModel.Call(() => c.CancelJobAsync(Need()).GetAwaiter().GetResult());
                stdout.WriteLine(json ? Formatter.Format(cancelled) : $"{cancelled.Id}: {cancelled.State.ToString().ToUpperInvariant()}");
                return 0;
            case "watch":
                return Report(Follow(progress => c.WatchJobAsync(Need(), progress), stderr), json, stdout, stderr, report);
            default:
                throw new UsageException($"unknown jobs command '{verb}'; use list, watch ID, cancel ID or result ID");
        }
    }

    public static int Artifacts(string verb, string? name, CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        using var c = Connect(args);
        string prefix = args.Text("prefix") ?? "";
        string? dir = verb switch { "get" => args.RequireText("out", "a folder to write the files to"), "put" => args.RequireText("from", "a folder whose files to upload"), _ => null };
        string? metadata = args.Text("metadata-json");
        args.RejectUnknown($"artifacts {verb}");
        string Need() => name ?? throw new UsageException($"artifacts {verb} needs an artifact name");
        switch (verb)
        {
            case "list":
                var list = RemoteModel.Call(() => c.ListArtifactsAsync(prefix).GetAwaiter().GetResult());
                if (json)
                    stdout.WriteLine(Formatter.Format(list));
                else
                    Terminal.Table(stdout, ["artifact", "bytes", "files"],
                        list.Artifacts.Select(a => new[] { a.Name, a.Files.Sum(f => f.Bytes).ToString("N0", System.Globalization.CultureInfo.CurrentCulture), string.Join(", ", a.Files.Select(f => f.Name)) }),
                        row => $"  {row[0],-40} {row[1],12} B  {row[2]}");
                return 0;
            case "get":
                var header = RemoteModel.Call(() => c.DownloadArtifactAsync(Need(), dir!).GetAwaiter().GetResult());
                stdout.WriteLine(json ? Formatter.Format(header) : $"{header.Name}: {header.Files.Count} files written to {dir}");
                return 0;
            case "put":
                var stored = RemoteModel.Call(() => c.UploadArtifactAsync(Need(), dir!, metadata).GetAwaiter().GetResult());
                stdout.WriteLine(json ? Formatter.Format(stored) : $"{stored.Name}: {stored.Files.Count} files stored");
                return 0;
            case "rm":
                bool deleted = RemoteModel.Call(() => c.DeleteArtifactAsync(Need()).GetAwaiter().GetResult());
                stdout.WriteLine(json ? Formatter.Format(new DeleteArtifactResponse { Deleted = deleted }) : deleted ? $"{Need()} deleted" : $"there was no artifact {Need()}");
                return 0;
            default:
                throw new UsageException($"unknown artifacts command '{verb}'; use list, get NAME --out DIR, put NAME --from DIR or rm NAME");
        }
    }
}
