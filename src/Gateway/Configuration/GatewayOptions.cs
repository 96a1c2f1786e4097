using InterpMesh.Gateway.Security;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Configuration;

/// <summary>Settings of the gateway (section <c>Gateway</c>; environment <c>Gateway__PluginsPath</c>, …).</summary>
public sealed class GatewayOptions
{
    public const string Section = "Gateway";

    /// <summary>Models by name, each with the gRPC addresses of its model-service replicas.</summary>
    public Dictionary<string, ModelRoute> Models { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Model used when a request names none; by default the only configured model.</summary>
    public string? DefaultModel { get; set; }

    /// <summary>Folder with one sub-folder per plugin (<c>plugins/&lt;id&gt;/plugin.json</c>).</summary>
    public string PluginsPath { get; set; } = "plugins";

    /// <summary>Reload a plugin when its files change (development only).</summary>
    public bool HotReload { get; set; }

    /// <summary>Artifact store directory (a volume in Kubernetes).</summary>
    public string ArtifactsPath { get; set; } = "data/artifacts";

    /// <summary>Folder of the embedded job store (<c>jobs.db</c>, SQLite) used when <see cref="JobsOptions.ConnectionString"/> is unset.</summary>
    public string JobsPath { get; set; } = "data/jobs";

    /// <summary>The shared job store and this process's worker (section <c>Gateway:Jobs</c>).</summary>
    public JobsOptions Jobs { get; set; } = new();

    /// <summary>Jobs this process's worker runs at once; more wait in the shared queue.</summary>
    public int MaxConcurrentJobs { get; set; } = 2;

    /// <summary>Jobs waiting at most, over all keys and replicas; beyond it SubmitJob answers RESOURCE_EXHAUSTED.</summary>
    public int MaxQueuedJobs { get; set; } = 64;

    /// <summary>Finished jobs kept in the job store, newest first; older records are deleted. Their artifacts stay.</summary>
    public int MaxRetainedJobs { get; set; } = 10000;

    /// <summary>Finished jobs older than this are deleted (hours); 0 keeps them until <see cref="MaxRetainedJobs"/> pushes them out.</summary>
    public double JobRetentionHours { get; set; } = 24 * 7;

    /// <summary>Time limit of a job that asks for none (seconds).</summary>
    public int DefaultJobTimeoutSeconds { get; set; } = 3600;

    /// <summary>Largest time limit a job may ask for (seconds).</summary>
    public int MaxJobTimeoutSeconds { get; set; } = 86400;

    /// <summary>Deadline of a proxied model call when the client sets none (seconds).</summary>
    public int CallTimeoutSeconds { get; set; } = 600;

    /// <summary>Largest request message accepted (bytes).</summary>
    public int MaxRequestBytes { get; set; } = 64 << 20;

    public AuthOptions Auth { get; set; } = new();

    public AuthorizationOptions Authorization { get; set; } = new();

    public LimitsOptions Limits { get; set; } = new();

    public RateLimitOptions RateLimit { get; set; } = new();

    /// <summary>OTLP collector for traces; unset = no trace export (<c>OTEL_EXPORTER_OTLP_ENDPOINT</c> also works).</summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary><c>grpc</c> or <c>http/protobuf</c>.</summary>
    public string OtlpProtocol { get; set; } = "grpc";
}

/// <summary>The job store shared by every gateway replica and worker, and the lease of this process's worker.</summary>
public sealed class JobsOptions
{
    /// <summary>The environment variable read when <see cref="ConnectionString"/> is not configured (besides <c>Gateway__Jobs__ConnectionString</c>).</summary>
    public const string ConnectionStringVariable = "INTERPMESH_JOBS_CONNECTION_STRING";

    /// <summary>
    /// An Npgsql connection string (<c>Host=db;Database=interpmesh;Username=interpmesh;Password=…</c>): every
    /// replica pointed at one database shares jobs, quotas and the queue. Unset: the embedded SQLite
    /// file <c>jobs.db</c> in <see cref="GatewayOptions.JobsPath"/>, for one process (<c>interpmesh up</c>, the demo, tests).
    /// </summary>
    public string? ConnectionString { get; set; }

    /// <summary>How long a worker's hold on a running job lasts without a heartbeat (it beats every third of it); a worker that dies loses its jobs after this long.</summary>
    public int LeaseSeconds { get; set; } = 15;

    /// <summary>Takes of one job before a lost lease (a dead worker) fails it instead of re-queueing it.</summary>
    public int MaxAttempts { get; set; } = 3;

    /// <summary>Jobs one key may run at once on all workers together (fair share; an operator may set one key's own).</summary>
    public int MaxRunningPerKey { get; set; } = 4;

    /// <summary>
    /// Run jobs in this process (its worker takes <see cref="GatewayOptions.MaxConcurrentJobs"/> at once). False: a
    /// front door only, which queues, serves and cancels jobs that replicas with a worker run (they
    /// share the store). Plugins are still loaded, to validate submissions and describe plugins.
    /// </summary>
    public bool RunWorker { get; set; } = true;

    /// <summary>How often WatchJob reads new events, and an idle worker looks for jobs (milliseconds).</summary>
    public int PollMilliseconds { get; set; } = 250;
}

/// <summary>The replicas serving one model.</summary>
public sealed class ModelRoute
{
    /// <summary>
    /// gRPC addresses; calls are spread over them. Either one server, <c>http://model-gpt2-0.model-gpt2:50051</c>,
    /// or <c>dns:///model-gpt2.interpmesh.svc.cluster.local:50051</c>: every address the name resolves to
    /// (the ready pods of a headless Service), balanced round-robin and re-resolved every 15 s.
    /// </summary>
    public List<string> Endpoints { get; set; } = [];
}

/// <summary>API keys. Keys are stored only as SHA-256 hashes (hex).</summary>
public sealed class AuthOptions
{
    /// <summary>Require a key on every call (health checks excepted). Turn off only for local use.</summary>
    public bool Enabled { get; set; } = true;

    public List<ApiKeyEntry> Keys { get; set; } = [];

    /// <summary>A JSON file (e.g. a mounted Secret) with more keys: <c>[{"name":…, "sha256":…, "roles":[…]}]</c>. Re-read when it changes.</summary>
    public string? KeysFile { get; set; }
}

/// <summary>Which role each RPC needs, beyond what the protos declare.</summary>
public sealed class AuthorizationOptions
{
    /// <summary>
    /// Role (<c>read</c>, <c>analyze</c>, <c>admin</c>) by method, <c>interpmesh.v1.ModelService/FutureRpc</c>
    /// (a leading '/' is optional). Overrides the role an RPC declares in its proto, and is the only
    /// way to open an RPC the gateway was not compiled with: without a role, an RPC is refused.
    /// </summary>
    public Dictionary<string, string> Roles { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>
/// Sizes of what clients send that the gateway stores and later lists (job records, artifact
/// manifests), checked before anything is stored: a list or get must never exceed what a client
/// can receive (gRPC's default 4 MiB).
/// </summary>
public sealed class LimitsOptions
{
    /// <summary>Largest <c>parameters_json</c> of an analysis (UTF-8 bytes).</summary>
    public int MaxParametersBytes { get; set; } = 256 << 10;

    /// <summary>Largest <c>metadata_json</c> of an artifact (UTF-8 bytes).</summary>
    public int MaxMetadataBytes { get; set; } = 64 << 10;

    /// <summary>Most files in one artifact (each is listed with its name, size and checksum).</summary>
    public int MaxArtifactFiles { get; set; } = 256;

    /// <summary>Largest artifact, all its files together, counted while it is written (uploads and plugins alike).</summary>
    public long MaxArtifactBytes { get; set; } = 16L << 30;

    /// <summary>ListArtifacts page size when the request asks for none.</summary>
    public int DefaultPageSize { get; set; } = 100;

    /// <summary>Largest ListArtifacts page size; a request for more gets this many.</summary>
    public int MaxPageSize { get; set; } = 1000;
}

/// <summary>One API key.</summary>
public sealed class ApiKeyEntry
{
    /// <summary>Who holds it; appears in metrics and job records (never the key).</summary>
    public string Name { get; set; } = "";

    /// <summary>Lower-case hex SHA-256 of the key (<c>printf %s KEY | sha256sum</c>).</summary>
    public string Sha256 { get; set; } = "";

    /// <summary>Any of <c>read</c>, <c>analyze</c>, <c>admin</c> (admin implies the others, analyze implies read).</summary>
    public List<string> Roles { get; set; } = [];
}

/// <summary>Per-key limits.</summary>
public sealed class RateLimitOptions
{
    /// <summary>Sustained calls per second per key (token bucket); 0 = unlimited.</summary>
    public double RequestsPerSecond { get; set; } = 50;

    /// <summary>Bucket size: calls a key may make at once after being idle.</summary>
    public int Burst { get; set; } = 100;

    /// <summary>Queued plus running jobs per key.</summary>
    public int MaxJobsPerKey { get; set; } = 8;
}

/// <summary>Reports every configuration error at once, at start.</summary>
internal sealed class GatewayOptionsValidator : IValidateOptions<GatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, GatewayOptions o)
    {
        var errors = new List<string>();
        if (o.Models.Count == 0)
            errors.Add("Gateway:Models is empty: configure at least one model, e.g. Gateway:Models:gpt2:Endpoints:0=http://127.0.0.1:50051");
        foreach (var (model, route) in o.Models)
        {
            if (route.Endpoints.Count == 0)
                errors.Add($"Gateway:Models:{model}:Endpoints is empty");
            foreach (var e in route.Endpoints)
            {
                if (EndpointError(e) is { } error)
                    errors.Add($"Gateway:Models:{model}:Endpoints has '{e}': {error}");
            }
        }
        if (o.DefaultModel is { Length: > 0 } d && !o.Models.ContainsKey(d))
            errors.Add($"Gateway:DefaultModel '{d}' is not one of the configured models ({string.Join(", ", o.Models.Keys)})");
        if (o.MaxConcurrentJobs < 1)
            errors.Add($"Gateway:MaxConcurrentJobs must be at least 1, got {o.MaxConcurrentJobs}");
        if (o.MaxQueuedJobs < 1)
            errors.Add($"Gateway:MaxQueuedJobs must be at least 1, got {o.MaxQueuedJobs}");
        if (o.MaxRetainedJobs < 1)
            errors.Add($"Gateway:MaxRetainedJobs must be at least 1, got {o.MaxRetainedJobs}");
        if (o.JobRetentionHours < 0 || !double.IsFinite(o.JobRetentionHours))
            errors.Add($"Gateway:JobRetentionHours must be 0 (no age limit) or positive, got {o.JobRetentionHours}");
        if (o.DefaultJobTimeoutSeconds < 1 || o.MaxJobTimeoutSeconds < o.DefaultJobTimeoutSeconds)
            errors.Add($"Gateway:DefaultJobTimeoutSeconds ({o.DefaultJobTimeoutSeconds}) must be at least 1 and at most MaxJobTimeoutSeconds ({o.MaxJobTimeoutSeconds})");
        if (o.Jobs.LeaseSeconds is < 3 or > 3600)
            errors.Add($"Gateway:Jobs:LeaseSeconds must be from 3 to 3600, got {o.Jobs.LeaseSeconds}");
        if (o.Jobs.MaxAttempts < 1)
            errors.Add($"Gateway:Jobs:MaxAttempts must be at least 1 (one run, no retry), got {o.Jobs.MaxAttempts}");
        if (o.Jobs.MaxRunningPerKey < 1)
            errors.Add($"Gateway:Jobs:MaxRunningPerKey must be at least 1, got {o.Jobs.MaxRunningPerKey}");
        if (o.Jobs.PollMilliseconds is < 10 or > 10000)
            errors.Add($"Gateway:Jobs:PollMilliseconds must be from 10 to 10000, got {o.Jobs.PollMilliseconds}");
        if (o.CallTimeoutSeconds < 1)
            errors.Add($"Gateway:CallTimeoutSeconds must be at least 1, got {o.CallTimeoutSeconds}");
        if (o.MaxRequestBytes < 1024)
            errors.Add($"Gateway:MaxRequestBytes must be at least 1024, got {o.MaxRequestBytes}");
        if (o.Auth.Enabled && o.Auth.Keys.Count == 0 && string.IsNullOrEmpty(o.Auth.KeysFile))
            errors.Add("Gateway:Auth is enabled but no keys are configured: add Gateway:Auth:Keys or Gateway:Auth:KeysFile, or set Gateway:Auth:Enabled=false for local use");
        if (o.Auth.KeysFile is { Length: > 0 } f && !File.Exists(f))
            errors.Add($"Gateway:Auth:KeysFile '{f}' does not exist");
        for (int i = 0; i < o.Auth.Keys.Count; i++)
            errors.AddRange(ApiKeyEntryErrors(o.Auth.Keys[i], $"Gateway:Auth:Keys:{i}"));
        foreach (var (method, role) in o.Authorization.Roles)
        {
            if (!RoleNames.TryParse(role, out _))
                errors.Add($"Gateway:Authorization:Roles:{method} has unknown role '{role}'; use {RoleNames.Known}");
            if (!IsMethodPath(method))
                errors.Add($"Gateway:Authorization:Roles:{method} does not name a method; use package.Service/Method, e.g. interpmesh.v1.ModelService/Run");
        }
        var limits = o.Limits;
        // The smallest useful size: "{}".
        if (limits.MaxParametersBytes < 2 || limits.MaxMetadataBytes < 2)
            errors.Add($"Gateway:Limits:MaxParametersBytes ({limits.MaxParametersBytes}) and MaxMetadataBytes ({limits.MaxMetadataBytes}) must be at least 2 (\"{{}}\")");
        // A listed artifact must fit in a page: its name, metadata and files well under the page budget.
        if (limits.MaxMetadataBytes > Api.RecordLimits.PageBudgetBytes / 4)
            errors.Add($"Gateway:Limits:MaxMetadataBytes is {limits.MaxMetadataBytes}; at most {Api.RecordLimits.PageBudgetBytes / 4}, so that an artifact always fits in a list page");
        if (limits.MaxArtifactBytes < 1)
            errors.Add($"Gateway:Limits:MaxArtifactBytes must be at least 1, got {limits.MaxArtifactBytes}");
        if (limits.MaxArtifactFiles < 1 || limits.MaxArtifactFiles > 4096)
            errors.Add($"Gateway:Limits:MaxArtifactFiles must be between 1 and 4096, got {limits.MaxArtifactFiles}");
        if (limits.DefaultPageSize < 1 || limits.MaxPageSize < limits.DefaultPageSize)
            errors.Add($"Gateway:Limits:DefaultPageSize ({limits.DefaultPageSize}) must be at least 1 and at most MaxPageSize ({limits.MaxPageSize})");
        foreach (var model in o.Models.Keys.Where(m => m.Length > Api.RecordLimits.MaxModelNameLength))
            errors.Add($"Gateway:Models has a model name of {model.Length} characters ('{model[..40]}…'); the limit is {Api.RecordLimits.MaxModelNameLength}");
        if (o.RateLimit.RequestsPerSecond < 0 || o.RateLimit.Burst < 1 || o.RateLimit.MaxJobsPerKey < 1)
            errors.Add("Gateway:RateLimit needs RequestsPerSecond >= 0, Burst >= 1 and MaxJobsPerKey >= 1");
        if (!string.IsNullOrEmpty(o.OtlpEndpoint) && (!Uri.TryCreate(o.OtlpEndpoint, UriKind.Absolute, out var otlp) || otlp.Scheme is not ("http" or "https")))
            errors.Add($"Gateway:OtlpEndpoint must be an http(s) URL, got '{o.OtlpEndpoint}'");
        if (o.OtlpProtocol is not ("grpc" or "http/protobuf"))
            errors.Add($"Gateway:OtlpProtocol must be grpc or http/protobuf, got '{o.OtlpProtocol}'");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>What is wrong with a model endpoint, or null: an http(s) URL or <c>dns:///host:port</c>.</summary>
    public static string? EndpointError(string endpoint)
    {
        if (InterpMesh.Client.Channels.IsDns(endpoint))
            return DnsEndpointError(endpoint);
        return Uri.TryCreate(endpoint, UriKind.Absolute, out var u) && u.Scheme is "http" or "https" ? null
            : "not an http(s) URL (http://host:port) nor dns:///host:port";
    }

    private static string? DnsEndpointError(string endpoint)
    {
        const string Form = "use dns:///host:port, e.g. dns:///model-gpt2.interpmesh.svc.cluster.local:50051";
        if (!endpoint.StartsWith("dns:///", StringComparison.OrdinalIgnoreCase))
            return $"a dns endpoint names no DNS server (nothing between 'dns://' and the third '/'); {Form}";
        string target = endpoint["dns:///".Length..];
        if (target.Length == 0)
            return $"no host; {Form}";
        if (target.IndexOfAny(['/', '?', '#', '@', ' ']) >= 0)
            return $"'{target}' is not host:port (no path, query or user); {Form}";
        int colon = target.LastIndexOf(':');
        if (colon < 0 || (target.StartsWith('[') && colon < target.IndexOf(']', StringComparison.Ordinal)))
            return $"no port: the gateway cannot guess the model service's gRPC port; {Form}";
        string host = target[..colon], port = target[(colon + 1)..];
        if (host.Length == 0)
            return $"no host; {Form}";
        if (host.Contains(':', StringComparison.Ordinal) && !(host.StartsWith('[') && host.EndsWith(']')))
            return $"an IPv6 host goes in brackets, dns:///[::1]:50051; {Form}";
        if (!int.TryParse(port, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int p) || p is < 1 or > 65535)
            return $"port '{port}' is not a number from 1 to 65535; {Form}";
        return Uri.CheckHostName(host.Trim('[', ']')) == UriHostNameType.Unknown ? $"'{host}' is not a host name; {Form}" : null;
    }

    public static IEnumerable<string> ApiKeyEntryErrors(ApiKeyEntry k, string where)
    {
        if (string.IsNullOrWhiteSpace(k.Name))
            yield return $"{where}: Name is required";
        if (k.Sha256.Length != 64 || !k.Sha256.All(char.IsAsciiHexDigitLower))
            yield return $"{where} ({k.Name}): Sha256 must be 64 lower-case hex digits (printf %s KEY | sha256sum), not the key itself";
        foreach (var r in k.Roles.Where(r => !RoleNames.TryParse(r, out _)))
            yield return $"{where} ({k.Name}): unknown role '{r}'; use read, analyze or admin";
    }

    /// <summary><c>package.Service/Method</c>, with an optional leading '/'.</summary>
    private static bool IsMethodPath(string method)
    {
        var parts = RpcRoles.FullMethod(method).Split('/');
        return parts.Length == 3 && parts[1].Contains('.', StringComparison.Ordinal) && parts[1].Length > 0 && parts[2].Length > 0
            && parts[1].All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_') && parts[2].All(c => char.IsAsciiLetterOrDigit(c) || c == '_');
    }
}
