using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins;

/// <summary>
/// The model a run analyses, served by the ModelService behind the gateway. Requests and results
/// are the <c>interpmesh.v1</c> messages (see <c>protos/interpmesh/v1/model_service.proto</c>).
/// </summary>
public interface IModelClient
{
    /// <summary>The model's name in the gateway's configuration.</summary>
    string Name { get; }

    /// <summary>Architecture, dimensions, hook catalogue, tokenizer and special tokens.</summary>
    Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default);

    /// <summary>Token ids of each text, as the model's tokenizer encodes it.</summary>
    Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default);

    /// <summary>Decodes token ids to text.</summary>
    Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default);

    /// <summary>
    /// Runs one forward. Yields each captured activation as soon as it has fully arrived (a CPU
    /// tensor the caller owns and must dispose), then one item with the result (logits, loss).
    /// </summary>
    IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, CancellationToken cancellationToken = default);

    /// <summary>Generates, yielding each step's message (tokens, or chunks of per-step captures) as it arrives.</summary>
    IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default);

    /// <summary>
    /// Generates, yielding each per-step capture whole (a CPU tensor the caller disposes, with its
    /// hook and layer) as soon as it has arrived, and each step's tokens: what
    /// <see cref="RunAsync"/> does for a forward. SDK 1.2; by default it assembles
    /// <see cref="GenerateAsync"/>'s messages.
    /// </summary>
    IAsyncEnumerable<GenerateOutput> GenerateStepsAsync(GenerateRequest request, CancellationToken cancellationToken = default)
        => GenerateOutput.AssembleAsync(GenerateAsync(request, cancellationToken), cancellationToken);

    /// <summary>
    /// Streams the model's parameters under TransformerLens names and layouts (<c>embed.W_E</c>,
    /// <c>blocks.0.attn.W_O</c>, <c>ln_final.w</c>, <c>unembed.W_U</c>; globs such as
    /// <c>blocks.*.attn.W_O</c>; see docs/modelservice.md, "Weights"), each whole as soon as it has
    /// arrived, in model order: a CPU tensor the caller owns and must dispose. Float32 unless
    /// <paramref name="dtype"/> asks for BFLOAT16 or FLOAT16. Unknown names are INVALID_ARGUMENT.
    /// SDK 2.1; a model client written for 2.0 throws <see cref="NotSupportedException"/>.
    /// </summary>
    IAsyncEnumerable<ModelWeight> GetWeightsAsync(IReadOnlyList<string> names, DType dtype = DType.Unspecified, CancellationToken cancellationToken = default)
        => throw new NotSupportedException($"the model client {GetType().Name} does not serve weights (IModelClient.GetWeightsAsync is new in SDK 2.1)");
}

/// <summary>One item of <see cref="IModelClient.GetWeightsAsync"/>: a parameter, whole.</summary>
public sealed class ModelWeight
{
    /// <summary>The weight's TransformerLens name, e.g. <c>blocks.0.attn.W_O</c>.</summary>
    public required string Name { get; init; }

    /// <summary>The weight (CPU, in the requested dtype; the caller disposes it).</summary>
    public required torch.Tensor Tensor { get; init; }

    /// <summary>The weight's block (<c>blocks.3.attn.W_O</c> → 3), or null for weights outside the blocks.</summary>
    public int? Layer => HookNames.Layer(Name);
}

/// <summary>One item of a <see cref="IModelClient.RunAsync"/> stream: an activation or the final result.</summary>
public sealed class RunOutput
{
    /// <summary>The captured hook's name, or null for the result.</summary>
    public string? Hook { get; init; }

    /// <summary>The captured tensor (CPU, in the requested dtype; the caller disposes it), or null for the result.</summary>
    public torch.Tensor? Activation { get; init; }

    /// <summary>The final result, or null for an activation.</summary>
    public RunResult? Result { get; init; }

    /// <summary>True when <see cref="Activation"/> is the gradient d metric / d activation of <see cref="Hook"/> (a request with <c>RunRequest.gradient</c>), not the activation.</summary>
    public bool Gradient { get; init; }

    /// <summary>The captured hook's block (<c>blocks.3.hook_resid_post</c> → 3), or null (the result, or a hook outside the blocks).</summary>
    public int? Layer => HookNames.Layer(Hook);
}
