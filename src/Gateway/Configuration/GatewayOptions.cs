using InterpMesh.Gateway.Security;
using InterpMesh.Routing;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Configuration;

/// <summary>Settings of the gateway (section <c>Gateway</c>; environment <c>Gateway__ArtifactsPath</c>, …).</summary>
public sealed class GatewayOptions
{
    public const string Section = "Gateway";

    /// <summary>
    /// Keys of gateways that ran jobs themselves, now settings of the analysis worker (section
    /// <c>Worker</c>, src/AnalysisWorker's <c>WorkerOptions</c>): a gateway configured with any of
    /// them refuses to start rather than ignore it.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> MovedToWorker = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase)
    {
        ["Gateway:PluginsPath"] = "Worker:PluginsPath",
        ["Gateway:HotReload"] = "Worker:HotReload",
        ["Gateway:MaxConcurrentJobs"] = "Worker:MaxConcurrentJobs",
        ["Gateway:Jobs:RunWorker"] = "(none: run an analysis worker, or none, beside the gateways)",
        ["Gateway:Jobs:LeaseSeconds"] = "Worker:Jobs:LeaseSeconds",
        ["Gateway:Jobs:MaxAttempts"] = "Worker:Jobs:MaxAttempts",
        ["Gateway:Jobs:MaxRunningPerKey"] = "Worker:Jobs:MaxRunningPerKey",
    };

    /// <summary>Models by name, each with the gRPC addresses of its model-service replicas.</summary>
    public Dictionary<string, ModelRoute> Models { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Model used when a request names none; by default the only configured model.</summary>
    public string? DefaultModel { get; set; }

    /// <summary>Artifact store directory (a volume in Kubernetes).</summary>
    public string ArtifactsPath { get; set; } = "data/artifacts";

    /// <summary>Folder of the embedded job store (<c>jobs.db</c>, SQLite) used when <see cref="JobsOptions.ConnectionString"/> is unset.</summary>
    public string JobsPath { get; set; } = "data/jobs";

    /// <summary>The shared job store (section <c>Gateway:Jobs</c>).</summary>
    public JobsOptions Jobs { get; set; } = new();

    /// <summary>Jobs waiting at most, over all keys and replicas; beyond it SubmitJob answers RESOURCE_EXHAUSTED.</summary>
    public int MaxQueuedJobs { get; set; } = 64;

    /// <summary>Finished jobs kept in the job store, newest first; older records are deleted. Their artifacts stay.</summary>
    public int MaxRetainedJobs { get; set; } = 10000;

    /// <summary>Finished jobs older than this are deleted (hours); 0 keeps them until <see cref="MaxRetainedJobs"/> pushes them out.</summary>
    public double JobRetentionHours { get; set; } = 24 * 7;

    /// <summary>Time limit of a job that asks for none (seconds), stored with the job at submission.</summary>
    public int DefaultJobTimeoutSeconds { get; set; } = 3600;

    /// <summary>Largest time limit a job may ask for (seconds).</summary>
    public int MaxJobTimeoutSeconds { get; set; } = 86400;

    /// <summary>Deadline of a proxied model call when the client sets none (seconds). Plugins' calls: <c>Worker:CallTimeoutSeconds</c>.</summary>
    public int CallTimeoutSeconds { get; set; } = 600;

    /// <summary>Largest request message accepted (bytes).</summary>
    public int MaxRequestBytes { get; set; } = 64 << 20;

    public AuthOptions Auth { get; set; } = new();

    public AuthorizationOptions Authorization { get; set; } = new();

    public LimitsOptions Limits { get; set; } = new();

    public RateLimitOptions RateLimit { get; set; } = new();

    /// <summary>Browser origins allowed to call the gateway cross-origin (REST/JSON and gRPC-Web); none by default (docs/rest.md).</summary>
    public CorsOptions Cors { get; set; } = new();

    /// <summary>OTLP collector for traces; unset = no trace export (<c>OTEL_EXPORTER_OTLP_ENDPOINT</c> also works).</summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary><c>grpc</c> or <c>http/protobuf</c>.</summary>
    public string OtlpProtocol { get; set; } = "grpc";

    /// <summary>The keys of <see cref="MovedToWorker"/> the configuration sets (filled in at binding; reported by the validator).</summary>
    internal List<string> MovedKeysSet { get; } = [];
}

/// <summary>The job store shared by every gateway replica and analysis worker.</summary>
public sealed class JobsOptions
{
    /// <summary>The environment variable read when <see cref="ConnectionString"/> is not configured (besides <c>Gateway__Jobs__ConnectionString</c>); workers read it too.</summary>
    public const string ConnectionStringVariable = InterpMesh.Jobs.JobStores.ConnectionStringVariable;

    /// <summary>
    /// An Npgsql connection string (<c>Host=db;Database=interpmesh;Username=interpmesh;Password=…</c>): every
    /// gateway and worker pointed at one database shares jobs, quotas, the queue and the plugin catalog. Unset: the embedded SQLite
    /// file <c>jobs.db</c> in <see cref="GatewayOptions.JobsPath"/>, for one machine (<c>interpmesh up</c>, the demo, tests), which a worker
    /// given the same folder (<c>Worker:JobsPath</c>) shares.
    /// </summary>
    public string? ConnectionString { get; set; }

    /// <summary>How often WatchJob reads new events (milliseconds).</summary>
    public int PollMilliseconds { get; set; } = 250;

    /// <summary>How long the plugin catalog read from the store is reused (milliseconds): ListPlugins and submissions see a worker's publication within this.</summary>
    public int PluginCacheMilliseconds { get; set; } = 3000;
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

/// <summary>Cross-origin access for browsers (web pages served from another origin calling REST/JSON or gRPC-Web).</summary>
public sealed class CorsOptions
{
    /// <summary>
    /// Exact origins (<c>scheme://host[:port]</c>, e.g. <c>https://console.example.org</c>) whose pages may
    /// call the gateway. Empty (the default): CORS is off and no response carries CORS headers, so
    /// browsers refuse cross-origin calls.
    /// </summary>
    public List<string> Origins { get; set; } = [];

    /// <summary>What is wrong with <paramref name="origin"/> as a CORS origin, or null.</summary>
    public static string? OriginError(string origin) =>
        Uri.TryCreate(origin, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https" && uri.AbsolutePath == "/" && origin.TrimEnd('/') == uri.GetLeftPart(UriPartial.Authority)
            && string.IsNullOrEmpty(uri.Query) && string.IsNullOrEmpty(uri.Fragment)
            ? null
            : $"Gateway:Cors:Origins has '{(origin.Length > 80 ? origin[..80] + "…" : origin)}', which is not an origin; write scheme://host[:port] with no path, e.g. https://console.example.org (no wildcards)";
}

/// <summary>Reports every configuration error at once, at start.</summary>
internal sealed class GatewayOptionsValidator : IValidateOptions<GatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, GatewayOptions o)
    {
        var errors = new List<string>();
        foreach (var moved in o.MovedKeysSet)
            errors.Add(MovedError(moved));
        errors.AddRange(ModelRoutes.Errors(GatewayOptions.Section, o.Models, o.DefaultModel));
        if (o.MaxQueuedJobs < 1)
            errors.Add($"Gateway:MaxQueuedJobs must be at least 1, got {o.MaxQueuedJobs}");
        if (o.MaxRetainedJobs < 1)
            errors.Add($"Gateway:MaxRetainedJobs must be at least 1, got {o.MaxRetainedJobs}");
        if (o.JobRetentionHours < 0 || !double.IsFinite(o.JobRetentionHours))
            errors.Add($"Gateway:JobRetentionHours must be 0 (no age limit) or positive, got {o.JobRetentionHours}");
        if (o.DefaultJobTimeoutSeconds < 1 || o.MaxJobTimeoutSeconds < o.DefaultJobTimeoutSeconds)
            errors.Add($"Gateway:DefaultJobTimeoutSeconds ({o.DefaultJobTimeoutSeconds}) must be at least 1 and at most MaxJobTimeoutSeconds ({o.MaxJobTimeoutSeconds})");
        if (o.Jobs.PollMilliseconds is < 10 or > 10000)
            errors.Add($"Gateway:Jobs:PollMilliseconds must be from 10 to 10000, got {o.Jobs.PollMilliseconds}");
        if (o.Jobs.PluginCacheMilliseconds is < 0 or > 60000)
            errors.Add($"Gateway:Jobs:PluginCacheMilliseconds must be from 0 to 60000, got {o.Jobs.PluginCacheMilliseconds}");
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
        errors.AddRange(o.Cors.Origins.Select(CorsOptions.OriginError).OfType<string>());
        if (o.OtlpProtocol is not ("grpc" or "http/protobuf"))
            errors.Add($"Gateway:OtlpProtocol must be grpc or http/protobuf, got '{o.OtlpProtocol}'");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    /// <summary>What is wrong with a model endpoint, or null (shared with the worker: <see cref="ModelRoutes.EndpointError"/>).</summary>
    public static string? EndpointError(string endpoint) => ModelRoutes.EndpointError(endpoint);

    /// <summary>The refusal of a key that moved to the worker.</summary>
    public static string MovedError(string key) =>
        $"{key} moved to the analysis worker's settings ({GatewayOptions.MovedToWorker[key]}, section Worker:): gateways no longer run jobs or load plugins; remove it from the gateway's configuration and set it on the worker (see docs/deploy.md, Topology)";

    /// <summary>The keys of <see cref="GatewayOptions.MovedToWorker"/> that <paramref name="configuration"/> sets.</summary>
    public static IEnumerable<string> MovedKeys(Microsoft.Extensions.Configuration.IConfiguration configuration) =>
        GatewayOptions.MovedToWorker.Keys.Where(k => configuration.GetSection(k).Exists());

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
