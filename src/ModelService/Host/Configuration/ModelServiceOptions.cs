using InterpMesh.Runtime.Execution;
using Microsoft.Extensions.Options;

namespace InterpMesh.ModelService.Configuration;

/// <summary>Settings of the ModelService (section <c>ModelService</c>; environment: <c>ModelService__ModelPath</c>, …).</summary>
public sealed class ModelServiceOptions
{
    public const string Section = "ModelService";

    /// <summary>Hugging Face folder or llama2.c <c>.bin</c>.</summary>
    public string ModelPath { get; set; } = "";

    /// <summary>Tokenizer file or folder; by default found beside the model.</summary>
    public string? TokenizerPath { get; set; }

    /// <summary><c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>.</summary>
    public string Device { get; set; } = "cpu";

    /// <summary><c>float32</c>, <c>bfloat16</c> or <c>float16</c>.</summary>
    public string DType { get; set; } = "float32";

    /// <summary>Torch intra-op threads; 0 = torch's default (the number of cores).</summary>
    public int Threads { get; set; }

    /// <summary>Largest activation chunk sent in one message (stays well under the 4 MiB gRPC default).</summary>
    public int MaxChunkBytes { get; set; } = 1 << 20;

    /// <summary>Largest total capture one Run may request (bytes); larger requests get RESOURCE_EXHAUSTED.</summary>
    public long MaxCaptureBytes { get; set; } = 1L << 30;

    /// <summary>Bytes of capture buffers kept for reuse after they were sent (a fresh buffer costs its page mapping); 0 keeps none.</summary>
    public long CapturePoolBytes { get; set; } = 512L << 20;

    /// <summary>Requests running or queued at once; beyond it requests get RESOURCE_EXHAUSTED with retry info.</summary>
    public int MaxConcurrentRequests { get; set; } = 32;

    /// <summary>
    /// How long a request may wait for one of the <see cref="MaxConcurrentRequests"/> slots before it
    /// is refused (milliseconds; 0 = refuse at once). Waiters are served in arrival order, so a client
    /// that re-requests the moment it is served cannot keep slots from clients that asked earlier.
    /// </summary>
    public int AdmissionWaitMs { get; set; } = 100;

    /// <summary>Largest batch (inputs or prompts) one request may carry.</summary>
    public int MaxBatch { get; set; } = 64;

    /// <summary>Dynamic batching: most rows one forward may carry when concurrent Runs are merged.</summary>
    public int BatchMaxRows { get; set; } = 64;

    /// <summary>Dynamic batching: how long the oldest queued Run waits for compatible company (milliseconds; 0 = never wait).</summary>
    public int BatchWindowMs { get; set; } = 2;

    /// <summary>Most generation rows decoded together across all running Generates (continuous batching).</summary>
    public int MaxDecodeRows { get; set; } = 64;

    /// <summary>Unread output (bytes) above which a Generate pauses until its client reads; capped at <see cref="MaxCaptureBytes"/>.</summary>
    public long OutputBufferBytes { get; set; } = 64L << 20;

    /// <summary>A request whose client reads nothing for this long while output waits ends with RESOURCE_EXHAUSTED (seconds).</summary>
    public double StallTimeoutSeconds { get; set; } = 30;

    /// <summary>
    /// Largest estimated autograd memory (activations kept for the backward pass) one gradient
    /// request may need (bytes); larger requests get RESOURCE_EXHAUSTED. 0 disables gradients.
    /// </summary>
    public long GradientMemoryBytes { get; set; } = 1L << 30;

    /// <summary>
    /// Patching sweeps (a Run of identical inputs patched per row from some position on) compute the
    /// shared prefix once and each row only from its first patched position (false = always the plain forward).
    /// </summary>
    public bool PrefixReuse { get; set; } = true;

    /// <summary>The engine's view of these settings.</summary>
    public Engine.EngineOptions ToEngineOptions() => new()
    {
        MaxBatch = MaxBatch,
        BatchMaxRows = BatchMaxRows,
        BatchWindowMs = BatchWindowMs,
        MaxDecodeRows = MaxDecodeRows,
        MaxCaptureBytes = MaxCaptureBytes,
        CapturePoolBytes = CapturePoolBytes,
        OutputBufferBytes = Math.Min(OutputBufferBytes, MaxCaptureBytes),
        StallTimeout = TimeSpan.FromSeconds(StallTimeoutSeconds),
        MaxConcurrentRequests = MaxConcurrentRequests,
        AdmissionWait = TimeSpan.FromMilliseconds(AdmissionWaitMs),
        GradientMemoryBytes = GradientMemoryBytes,
        PrefixReuse = PrefixReuse,
    };

    /// <summary>OTLP collector for traces, e.g. <c>http://otel-collector:4317</c>; unset = no trace export (the standard <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> also works).</summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary><c>grpc</c> (port 4317) or <c>http/protobuf</c> (port 4318; <c>/v1/traces</c> is appended when the URL has no path).</summary>
    public string OtlpProtocol { get; set; } = "grpc";
}

/// <summary>Reports every configuration error at once, at start.</summary>
internal sealed class ModelServiceOptionsValidator : IValidateOptions<ModelServiceOptions>
{
    public ValidateOptionsResult Validate(string? name, ModelServiceOptions o)
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(o.ModelPath))
            errors.Add("ModelService:ModelPath is required (a Hugging Face folder or a llama2.c .bin)");
        else if (!File.Exists(o.ModelPath) && !Directory.Exists(o.ModelPath))
            errors.Add($"ModelService:ModelPath '{o.ModelPath}' does not exist");
        if (o.TokenizerPath is not null && !File.Exists(o.TokenizerPath) && !Directory.Exists(o.TokenizerPath))
            errors.Add($"ModelService:TokenizerPath '{o.TokenizerPath}' does not exist");
        if (o.Device != "cpu" && o.Device != "cuda" && !o.Device.StartsWith("cuda:", StringComparison.Ordinal))
            errors.Add($"ModelService:Device must be cpu, cuda or cuda:N, got '{o.Device}'");
        if (!DTypeNames.TryParse(o.DType, out _))
            errors.Add($"ModelService:DType must be {DTypeNames.Accepted}, got '{o.DType}'");
        if (o.Threads < 0)
            errors.Add($"ModelService:Threads must be 0 (default) or positive, got {o.Threads}");
        if (o.MaxChunkBytes < 1024 || o.MaxChunkBytes > 3 << 20)
            errors.Add($"ModelService:MaxChunkBytes must be between 1024 and {3 << 20} (under the 4 MiB message limit), got {o.MaxChunkBytes}");
        if (o.CapturePoolBytes < 0)
            errors.Add($"ModelService:CapturePoolBytes must be 0 (keep no buffers) or positive, got {o.CapturePoolBytes}");
        if (o.MaxCaptureBytes < 1)
            errors.Add($"ModelService:MaxCaptureBytes must be positive, got {o.MaxCaptureBytes}");
        if (o.GradientMemoryBytes < 0)
            errors.Add($"ModelService:GradientMemoryBytes must be 0 (gradients off) or positive, got {o.GradientMemoryBytes}");
        if (o.MaxConcurrentRequests < 1)
            errors.Add($"ModelService:MaxConcurrentRequests must be at least 1, got {o.MaxConcurrentRequests}");
        if (o.AdmissionWaitMs is < 0 or > 60_000)
            errors.Add($"ModelService:AdmissionWaitMs must be between 0 and 60000, got {o.AdmissionWaitMs}");
        if (o.MaxBatch < 1)
            errors.Add($"ModelService:MaxBatch must be at least 1, got {o.MaxBatch}");
        if (o.BatchMaxRows < 1)
            errors.Add($"ModelService:BatchMaxRows must be at least 1, got {o.BatchMaxRows}");
        if (o.MaxDecodeRows < o.MaxBatch)
            errors.Add($"ModelService:MaxDecodeRows must be at least MaxBatch ({o.MaxBatch}), got {o.MaxDecodeRows}");
        if (o.OutputBufferBytes < 1024)
            errors.Add($"ModelService:OutputBufferBytes must be at least 1024, got {o.OutputBufferBytes}");
        if (!(o.StallTimeoutSeconds is >= 0.05 and <= 3600))
            errors.Add($"ModelService:StallTimeoutSeconds must be between 0.05 and 3600, got {o.StallTimeoutSeconds}");
        if (o.BatchWindowMs is < 0 or > 1000)
            errors.Add($"ModelService:BatchWindowMs must be between 0 and 1000, got {o.BatchWindowMs}");
        if (!string.IsNullOrEmpty(o.OtlpEndpoint) && (!Uri.TryCreate(o.OtlpEndpoint, UriKind.Absolute, out var otlp) || otlp.Scheme is not ("http" or "https")))
            errors.Add($"ModelService:OtlpEndpoint must be an http(s) URL such as http://otel-collector:4317, got '{o.OtlpEndpoint}'");
        if (o.OtlpProtocol is not ("grpc" or "http/protobuf"))
            errors.Add($"ModelService:OtlpProtocol must be grpc or http/protobuf, got '{o.OtlpProtocol}'");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
