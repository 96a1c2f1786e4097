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

    /// <summary>Requests running or queued at once; beyond it requests get RESOURCE_EXHAUSTED with retry info.</summary>
    public int MaxConcurrentRequests { get; set; } = 32;

    /// <summary>Largest batch (inputs or prompts) one request may carry.</summary>
    public int MaxBatch { get; set; } = 64;
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
        if (o.DType is not ("float32" or "bfloat16" or "float16"))
            errors.Add($"ModelService:DType must be float32, bfloat16 or float16, got '{o.DType}'");
        if (o.Threads < 0)
            errors.Add($"ModelService:Threads must be 0 (default) or positive, got {o.Threads}");
        if (o.MaxChunkBytes < 1024 || o.MaxChunkBytes > 3 << 20)
            errors.Add($"ModelService:MaxChunkBytes must be between 1024 and {3 << 20} (under the 4 MiB message limit), got {o.MaxChunkBytes}");
        if (o.MaxCaptureBytes < 1)
            errors.Add($"ModelService:MaxCaptureBytes must be positive, got {o.MaxCaptureBytes}");
        if (o.MaxConcurrentRequests < 1)
            errors.Add($"ModelService:MaxConcurrentRequests must be at least 1, got {o.MaxConcurrentRequests}");
        if (o.MaxBatch < 1)
            errors.Add($"ModelService:MaxBatch must be at least 1, got {o.MaxBatch}");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
