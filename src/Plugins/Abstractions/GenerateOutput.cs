using System.Runtime.CompilerServices;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins;

/// <summary>
/// One item of <see cref="IModelClient.GenerateStepsAsync"/>: a capture of a step, whole (as
/// <see cref="IModelClient.RunAsync"/> yields them), or a step's tokens.
/// </summary>
public sealed class GenerateOutput
{
    /// <summary>The decoding step (0 for the first generated token).</summary>
    public int Step { get; init; }

    /// <summary>The captured hook's name, or null for a step's tokens.</summary>
    public string? Hook { get; init; }

    /// <summary>The captured hook's block, or null (tokens, or a hook outside the blocks).</summary>
    public int? Layer => HookNames.Layer(Hook);

    /// <summary>The captured tensor (CPU, in the requested dtype; the caller disposes it), or null for tokens.</summary>
    public torch.Tensor? Activation { get; init; }

    /// <summary>The step's tokens, texts, receipts and whether it is the last, or null for a capture.</summary>
    public GenerateResponse? Tokens { get; init; }

    /// <summary>
    /// Puts the raw Generate messages back together: capture chunks become one item per capture,
    /// token messages pass through. What <see cref="IModelClient.GenerateStepsAsync"/> does by default.
    /// </summary>
    public static async IAsyncEnumerable<GenerateOutput> AssembleAsync(IAsyncEnumerable<GenerateResponse> messages,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var assembler = new ChunkAssembler();
        await foreach (var message in messages.WithCancellation(cancellationToken).ConfigureAwait(false))
        {
            if (message.Activation is { } chunk)
            {
                if (assembler.Add(chunk) is { } capture)
                    yield return new GenerateOutput { Step = message.Step, Hook = capture.Hook, Activation = capture.Tensor.ToTorch() };
            }
            else
            {
                yield return new GenerateOutput { Step = message.Step, Tokens = message };
            }
        }
    }
}
