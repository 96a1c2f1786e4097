using InterpMesh.Routing;
using Microsoft.Extensions.Options;

namespace InterpMesh.AnalysisWorker.Configuration;

/// <summary>
/// Settings of an analysis worker (section <c>Worker</c>; environment <c>Worker__PluginsPath</c>,
/// <c>Worker__Jobs__ConnectionString</c>, …). The worker takes jobs from the job store gateways
/// queue them in, runs their plugins against the model services of <see cref="Models"/> and
/// writes artifacts to the folder the gateways serve them from.
/// </summary>
public sealed class WorkerOptions
{
    public const string Section = "Worker";

    /// <summary>Models by name, each with the gRPC addresses of its model-service replicas (the same names as the gateways' <c>Gateway:Models</c>).</summary>
    public Dictionary<string, ModelRoute> Models { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Model used when a job names none; by default the only configured model.</summary>
    public string? DefaultModel { get; set; }

    /// <summary>Folder with one sub-folder per plugin (<c>plugins/&lt;id&gt;/plugin.json</c>).</summary>
    public string PluginsPath { get; set; } = "plugins";

    /// <summary>Reload a plugin when its files change (development only).</summary>
    public bool HotReload { get; set; }

    /// <summary>Artifact store directory: the one the gateways serve (a shared volume in Kubernetes).</summary>
    public string ArtifactsPath { get; set; } = "data/artifacts";

    /// <summary>Folder of the embedded job store (<c>jobs.db</c>, SQLite) used when <see cref="WorkerJobsOptions.ConnectionString"/> is unset: the gateway's <c>Gateway:JobsPath</c>.</summary>
    public string JobsPath { get; set; } = "data/jobs";

    /// <summary>Jobs this worker runs at once; more wait in the shared queue.</summary>
    public int MaxConcurrentJobs { get; set; } = 2;

    /// <summary>Deadline of one model call a plugin makes (seconds).</summary>
    public int CallTimeoutSeconds { get; set; } = 600;

    /// <summary>The shared job store and this worker's leases (section <c>Worker:Jobs</c>).</summary>
    public WorkerJobsOptions Jobs { get; set; } = new();

    /// <summary>
    /// When a plugin ignores cancellation for the stop grace, stop this process (exit code
    /// <see cref="Hosting.AnalysisWorkerApp.RecycleExitCode"/>) after putting its other jobs back in
    /// the queue, so that its supervisor (Kubernetes, systemd) starts a clean one: a .NET process
    /// cannot kill the plugin's task. False (in-process hosting: <c>interpmesh up</c>, tests): the task
    /// is abandoned and keeps its thread until it returns by itself.
    /// </summary>
    public bool RecycleStuckPlugins { get; set; } = true;

    /// <summary>Largest artifact a plugin may save, all its files together (the gateways' <c>Gateway:Limits:MaxArtifactBytes</c>).</summary>
    public long MaxArtifactBytes { get; set; } = 16L << 30;

    /// <summary>
    /// Largest result a job may keep (its summary, tables and figures as sent on the wire). A GetJob
    /// answer carries it whole, and clients receive at most 4 MiB per message by default; larger
    /// results belong in an artifact.
    /// </summary>
    public int MaxResultBytes { get; set; } = DefaultMaxResultBytes;

    /// <summary>The default <see cref="MaxResultBytes"/>: 3 MiB.</summary>
    public const int DefaultMaxResultBytes = 3 << 20;

    /// <summary>The most <see cref="MaxResultBytes"/> may be: room left in 4 MiB for the rest of the record (parameters up to 256 KiB, messages).</summary>
    public const int MaxResultBytesCeiling = (7 << 20) / 2;

    /// <summary>Largest metadata (as JSON) of an artifact a plugin saves (the gateways' <c>Gateway:Limits:MaxMetadataBytes</c>, so it can be listed).</summary>
    public int MaxArtifactMetadataBytes { get; set; } = 64 << 10;

    /// <summary>OTLP collector for traces; unset = no trace export (<c>OTEL_EXPORTER_OTLP_ENDPOINT</c> also works).</summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary><c>grpc</c> or <c>http/protobuf</c>.</summary>
    public string OtlpProtocol { get; set; } = "grpc";
}

/// <summary>The job store shared with the gateways, and this worker's leases.</summary>
public sealed class WorkerJobsOptions
{
    /// <summary>The environment variable read when <see cref="ConnectionString"/> is not configured (besides <c>Worker__Jobs__ConnectionString</c>); the gateway reads the same one.</summary>
    public const string ConnectionStringVariable = InterpMesh.Jobs.JobStores.ConnectionStringVariable;

    /// <summary>An Npgsql connection string: the database the gateways queue jobs in. Unset: the embedded SQLite file <c>jobs.db</c> in <see cref="WorkerOptions.JobsPath"/>.</summary>
    public string? ConnectionString { get; set; }

    /// <summary>How long this worker's hold on a running job lasts without a heartbeat (it beats every third of it, and sees a cancel request then).</summary>
    public int LeaseSeconds { get; set; } = 15;

    /// <summary>How often an idle worker looks for jobs (milliseconds).</summary>
    public int PollMilliseconds { get; set; } = 250;

    /// <summary>Takes of one job before a lost lease (a dead worker) fails it instead of re-queueing it.</summary>
    public int MaxAttempts { get; set; } = 3;

    /// <summary>Jobs one key may run at once on all workers together (fair share).</summary>
    public int MaxRunningPerKey { get; set; } = 4;
}

/// <summary>Reports every configuration error at once, at start, each naming its key.</summary>
internal sealed class WorkerOptionsValidator : IValidateOptions<WorkerOptions>
{
    public ValidateOptionsResult Validate(string? name, WorkerOptions o)
    {
        const string S = WorkerOptions.Section;
        var errors = new List<string>(ModelRoutes.Errors(S, o.Models, o.DefaultModel));
        if (string.IsNullOrWhiteSpace(o.PluginsPath))
            errors.Add($"{S}:PluginsPath is empty: name the folder with one sub-folder per plugin");
        if (string.IsNullOrWhiteSpace(o.ArtifactsPath))
            errors.Add($"{S}:ArtifactsPath is empty: name the artifact folder the gateways serve");
        if (string.IsNullOrWhiteSpace(o.JobsPath))
            errors.Add($"{S}:JobsPath is empty: name the folder of the embedded job store (jobs.db), or set {S}:Jobs:ConnectionString");
        if (o.MaxConcurrentJobs is < 1 or > 256)
            errors.Add($"{S}:MaxConcurrentJobs must be from 1 to 256, got {o.MaxConcurrentJobs}");
        if (o.CallTimeoutSeconds < 1)
            errors.Add($"{S}:CallTimeoutSeconds must be at least 1, got {o.CallTimeoutSeconds}");
        if (o.Jobs.LeaseSeconds is < 3 or > 3600)
            errors.Add($"{S}:Jobs:LeaseSeconds must be from 3 to 3600, got {o.Jobs.LeaseSeconds}");
        if (o.Jobs.PollMilliseconds is < 10 or > 10000)
            errors.Add($"{S}:Jobs:PollMilliseconds must be from 10 to 10000, got {o.Jobs.PollMilliseconds}");
        if (o.Jobs.MaxAttempts < 1)
            errors.Add($"{S}:Jobs:MaxAttempts must be at least 1 (one run, no retry), got {o.Jobs.MaxAttempts}");
        if (o.Jobs.MaxRunningPerKey < 1)
            errors.Add($"{S}:Jobs:MaxRunningPerKey must be at least 1, got {o.Jobs.MaxRunningPerKey}");
        if (o.MaxResultBytes is < 1024 or > WorkerOptions.MaxResultBytesCeiling)
            errors.Add($"{S}:MaxResultBytes must be from 1024 to {WorkerOptions.MaxResultBytesCeiling} (3.5 MiB: a job record must fit gRPC's default 4 MiB message), got {o.MaxResultBytes}");
        if (o.MaxArtifactBytes < 1)
            errors.Add($"{S}:MaxArtifactBytes must be at least 1, got {o.MaxArtifactBytes}");
        if (o.MaxArtifactMetadataBytes < 2)
            errors.Add($"{S}:MaxArtifactMetadataBytes must be at least 2 (\"{{}}\"), got {o.MaxArtifactMetadataBytes}");
        if (!string.IsNullOrEmpty(o.OtlpEndpoint) && (!Uri.TryCreate(o.OtlpEndpoint, UriKind.Absolute, out var otlp) || otlp.Scheme is not ("http" or "https")))
            errors.Add($"{S}:OtlpEndpoint must be an http(s) URL, got '{o.OtlpEndpoint}'");
        if (o.OtlpProtocol is not ("grpc" or "http/protobuf"))
            errors.Add($"{S}:OtlpProtocol must be grpc or http/protobuf, got '{o.OtlpProtocol}'");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
