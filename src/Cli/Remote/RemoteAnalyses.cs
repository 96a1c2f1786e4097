using System.CommandLine;
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
    /// <summary>The options every gateway command takes: <c>--server</c>, <c>--key</c> (both defaulting to the settings) and <c>--json</c>.</summary>
    private sealed class GatewayOptions
    {
        public Option<string> Server { get; } = CliOptions.Text("--server", "the gateway's URL (or INTERPMESH_SERVER)", "URL");
        public Option<string> Key { get; } = CliOptions.Text("--key", "API key (or INTERPMESH_API_KEY)", "KEY");
        public Option<bool> Json { get; } = CliOptions.Flag("--json", "JSON output");

        public Command AddTo(Command command)
        {
            command.Options.Add(Server);
            command.Options.Add(Key);
            command.Options.Add(Json);
            return command;
        }

        public MeshClient Connect(ParseResult r, CliSettings? settings = null)
        {
            settings ??= CliSettings.Load();
            string url = r.GetValue(Server) ?? settings.Server
                ?? throw new UsageException($"--server is required (the gateway's address, e.g. --server http://127.0.0.1:50050), or set INTERPMESH_SERVER or \"server\" in {settings.ConfigPath}");
            return RemoteModel.Connect(new RemoteModel.RemoteTarget(url, r.GetValue(Key) ?? settings.ApiKey, null));
        }
    }

    private static readonly JsonFormatter Formatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));

    public static Command Plugins(CliConsole console)
    {
        var gateway = new GatewayOptions();
        var command = gateway.AddTo(new Command("plugins", "The analyses a gateway hosts."));
        command.SetAction(r =>
        {
            using var c = gateway.Connect(r);
            var list = RemoteModel.Call(() => c.ListPluginsAsync().GetAwaiter().GetResult());
            if (r.GetValue(gateway.Json))
            {
                console.Out.WriteLine(Formatter.Format(list));
                return 0;
            }
            Terminal.Table(console.Out, ["plugin", "version", "description"],
                list.Plugins.Select(p => p.Loaded ? new[] { p.Id, p.Version, p.Description } : [p.Id, "NOT LOADED", p.Error]),
                row => row[1] == "NOT LOADED" ? $"  {row[0],-18} NOT LOADED: {row[2]}" : $"  {row[0],-18} {row[1],-8} {row[2]}");
            return 0;
        });
        return command;
    }

    public static Command Run(CliConsole console)
    {
        var gateway = new GatewayOptions();
        var plugin = new Argument<string>("PLUGIN") { Description = "a plugin id: `interpmesh run probing --server URL --params file.json` (`interpmesh plugins` lists them)" };
        var model = CliOptions.Text("--model", "the gateway's model to analyse (or INTERPMESH_MODEL; default: the gateway's default)", "NAME");
        var parametersFile = CliOptions.ExistingFile("--params", "parameters file (JSON)");
        var parametersJson = CliOptions.Text("--params-json", "parameters as JSON text", "'{...}'");
        var timeout = CliOptions.Int("--timeout", "seconds before the gateway stops the job (0: its default)", min: 0, helpName: "S");
        var report = CliOptions.Text("--report", "also write the job as an HTML report", "FILE.html");
        var command = gateway.AddTo(new Command("run", "Runs an analysis through a gateway and follows it to its result.") { plugin, model, parametersFile, parametersJson, timeout, report });
        command.AddRule(r =>
        {
            if (r.Given(parametersFile) && r.Given(parametersJson))
                r.AddError("give --params FILE or --params-json TEXT, not both");
        });
        command.SetAction(r =>
        {
            string parameters = r.GetValue(parametersFile) is { } file ? File.ReadAllText(file.FullName) : r.GetValue(parametersJson) ?? "{}";
            var settings = CliSettings.Load();
            var request = new AnalysisRequest { Plugin = r.GetRequiredValue(plugin), Model = r.GetValue(model) ?? settings.Model ?? "", ParametersJson = parameters, TimeoutSeconds = r.GetValue(timeout) ?? 0 };
            using var c = gateway.Connect(r, settings);
            return Report(Follow(progress => c.RunAnalysisAsync(request, progress), console.Error), r.GetValue(gateway.Json), console.Out, console.Error, r.GetValue(report));
        });
        return command;
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

    /// <summary><c>jobs list | watch ID | cancel ID | result ID</c>.</summary>
    public static Command Jobs(CliConsole console)
    {
        var jobs = new Command("jobs", "Analysis jobs on a gateway.");

        var gateway = new GatewayOptions();
        var plugin = CliOptions.Text("--plugin", "only this plugin's jobs", "P");
        var list = gateway.AddTo(new Command("list", "Jobs this key may see.") { plugin });
        list.SetAction(r =>
        {
            using var c = gateway.Connect(r);
            var found = RemoteModel.Call(() => c.ListJobsAsync(r.GetValue(plugin) ?? "").GetAwaiter().GetResult());
            if (r.GetValue(gateway.Json))
                console.Out.WriteLine(Formatter.Format(found));
            else
                Terminal.Table(console.Out, ["id", "plugin", "state", "progress", "owner", "error"],
                    found.Jobs.Select(j => new[] { j.Id, j.Plugin, j.State.ToString().ToUpperInvariant(), j.Progress.ToString("P0", System.Globalization.CultureInfo.CurrentCulture), j.Owner, j.Error }),
                    row => $"  {row[0]}  {row[1],-16} {row[2],-12} {row[3],5}  {row[4]}  {row[5]}");
            return 0;
        });
        jobs.Subcommands.Add(list);

        jobs.Subcommands.Add(JobCommand("watch", "Follows a job to its end.", withReport: true, (c, id, json, report) =>
            Report(Follow(progress => c.WatchJobAsync(id, progress), console.Error), json, console.Out, console.Error, report)));
        jobs.Subcommands.Add(JobCommand("cancel", "Asks a job to stop.", withReport: false, (c, id, json, _) =>
        {
            var cancelled = RemoteModel.Call(() => c.CancelJobAsync(id).GetAwaiter().GetResult());
            console.Out.WriteLine(json ? Formatter.Format(cancelled) : $"{cancelled.Id}: {cancelled.State.ToString().ToUpperInvariant()}");
            return 0;
        }));
        jobs.Subcommands.Add(JobCommand("result", "A job's record and result.", withReport: true, (c, id, json, report) =>
            Report(RemoteModel.Call(() => c.GetJobAsync(id).GetAwaiter().GetResult()), json, console.Out, console.Error, report)));
        return jobs;
    }

    /// <summary>A <c>jobs</c> command on one job ID: (client, id, --json, --report) → exit code.</summary>
    private static Command JobCommand(string name, string description, bool withReport, Func<MeshClient, string, bool, string?, int> action)
    {
        var gateway = new GatewayOptions();
        var id = new Argument<string>("ID") { Description = "a job id (`interpmesh jobs list` shows them)" };
        var report = CliOptions.Text("--report", "also write the job as an HTML report", "FILE.html");
        var command = gateway.AddTo(new Command(name, description) { id });
        if (withReport)
            command.Options.Add(report);
        command.SetAction(r =>
        {
            using var c = gateway.Connect(r);
            return action(c, r.GetRequiredValue(id), r.GetValue(gateway.Json), r.GetValue(report));
        });
        return command;
    }

    /// <summary><c>artifacts list | get NAME --out DIR | put NAME --from DIR | rm NAME</c>.</summary>
    public static Command Artifacts(CliConsole console)
    {
        var artifacts = new Command("artifacts", "Artifacts on a gateway.");

        var gateway = new GatewayOptions();
        var prefix = CliOptions.Text("--prefix", "only names starting with this", "P");
        var list = gateway.AddTo(new Command("list", "Artifacts, optionally under a prefix.") { prefix });
        list.SetAction(r =>
        {
            using var c = gateway.Connect(r);
            var found = RemoteModel.Call(() => c.ListArtifactsAsync(r.GetValue(prefix) ?? "").GetAwaiter().GetResult());
            if (r.GetValue(gateway.Json))
                console.Out.WriteLine(Formatter.Format(found));
            else
                Terminal.Table(console.Out, ["artifact", "bytes", "files"],
                    found.Artifacts.Select(a => new[] { a.Name, a.Files.Sum(f => f.Bytes).ToString("N0", System.Globalization.CultureInfo.CurrentCulture), string.Join(", ", a.Files.Select(f => f.Name)) }),
                    row => $"  {row[0],-40} {row[1],12} B  {row[2]}");
            return 0;
        });
        artifacts.Subcommands.Add(list);

        var output = CliOptions.Text("--out", "a folder to write the files to", "DIR");
        output.Required = true;
        artifacts.Subcommands.Add(ArtifactCommand("get", "Downloads an artifact's files.", [output], (c, name, json, r) =>
        {
            string dir = r.GetRequiredValue(output);
            var header = RemoteModel.Call(() => c.DownloadArtifactAsync(name, dir).GetAwaiter().GetResult());
            console.Out.WriteLine(json ? Formatter.Format(header) : $"{header.Name}: {header.Files.Count} files written to {dir}");
            return 0;
        }));

        var from = CliOptions.ExistingFolder("--from", "a folder whose files to upload");
        from.Required = true;
        var metadata = CliOptions.Text("--metadata-json", "metadata (a JSON object)", "'{...}'");
        artifacts.Subcommands.Add(ArtifactCommand("put", "Uploads a folder's files as an artifact.", [from, metadata], (c, name, json, r) =>
        {
            var stored = RemoteModel.Call(() => c.UploadArtifactAsync(name, r.GetRequiredValue(from).FullName, r.GetValue(metadata)).GetAwaiter().GetResult());
            console.Out.WriteLine(json ? Formatter.Format(stored) : $"{stored.Name}: {stored.Files.Count} files stored");
            return 0;
        }));

        artifacts.Subcommands.Add(ArtifactCommand("rm", "Deletes an artifact (admin).", [], (c, name, json, _) =>
        {
            bool deleted = RemoteModel.Call(() => c.DeleteArtifactAsync(name).GetAwaiter().GetResult());
            console.Out.WriteLine(json ? Formatter.Format(new DeleteArtifactResponse { Deleted = deleted }) : deleted ? $"{name} deleted" : $"there was no artifact {name}");
            return 0;
        }));
        return artifacts;
    }

    /// <summary>An <c>artifacts</c> command on one artifact NAME: (client, name, --json, the parse) → exit code.</summary>
    private static Command ArtifactCommand(string verb, string description, Option[] options, Func<MeshClient, string, bool, ParseResult, int> action)
    {
        var gateway = new GatewayOptions();
        var name = new Argument<string>("NAME") { Description = "an artifact name (`interpmesh artifacts list` shows them)" };
        var command = gateway.AddTo(new Command(verb, description) { name });
        foreach (var option in options)
            command.Options.Add(option);
        command.SetAction(r =>
        {
            using var c = gateway.Connect(r);
            return action(c, r.GetRequiredValue(name), r.GetValue(gateway.Json), r);
        });
        return command;
    }
}
