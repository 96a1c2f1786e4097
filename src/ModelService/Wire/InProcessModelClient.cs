using System.Runtime.CompilerServices;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Plugins;
using InterpMesh.Runtime;
using Microsoft.Extensions.Logging;

namespace InterpMesh.ModelService.Wire;

/// <summary>
/// The plugin SDK's <see cref="IModelClient"/> over a <see cref="ModelEngine"/> in this process: the
/// same protos, mapped by <see cref="WireMapping"/> exactly as the gRPC endpoint maps them, without a
/// network hop. Errors are the <see cref="RpcException"/>s a gRPC client would see (INVALID_ARGUMENT,
/// RESOURCE_EXHAUSTED, ...); cancelling the caller's token throws <see cref="OperationCanceledException"/>.
/// The caller owns the engine.
/// </summary>
public sealed class InProcessModelClient(ModelEngine engine, string name = "local", int maxChunkBytes = 1 << 20, ILogger? logger = null) : IModelClient
{
    public string Name => name;

    public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) =>
        Task.FromResult(WireMapping.Info(engine, maxChunkBytes));

    public Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default)
    {
        var tokenizer = Tokenizer();
        return Task.FromResult<IReadOnlyList<int[]>>([.. texts.Select(tokenizer.Encode)]);
    }

    public Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default)
    {
        var tokenizer = Tokenizer();
        foreach (var id in tokens.SelectMany(t => t))
        {
            if (id < 0 || id >= tokenizer.VocabSize)
                throw new RpcException(new Status(StatusCode.InvalidArgument, $"token id {id} is outside the vocabulary (0..{tokenizer.VocabSize - 1})"));
        }
        return Task.FromResult<IReadOnlyList<string>>([.. tokens.Select(t => tokenizer.Decode(t))]);
    }

    private Runtime.Tokenization.ITextTokenizer Tokenizer() => engine.Model.Tokenizer
        ?? throw new RpcException(new Status(StatusCode.FailedPrecondition, "this model has no tokenizer; send token ids instead of text"));

    /// <summary>Captures arrive whole (CPU tensors the caller disposes), then the result, as from the gRPC client.</summary>
    public IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, CancellationToken cancellationToken = default) =>
        Serve<RunOutput>(() => Submit(WireMapping.ToSpec(request), s => engine.Submit(s), s => s.Interventions), output => output switch
        {
            CaptureOutput capture => [new RunOutput { Hook = capture.Hook, Activation = capture.Value.ToTensor(), Gradient = capture.Gradient }],
            RunOutcome outcome => [new RunOutput { Result = WireMapping.ToProto(outcome) }],
            _ => [],
        }, cancellationToken);

    /// <summary>The messages the gRPC endpoint would send: per-step capture chunks, then each step's tokens.</summary>
    public IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default) =>
        Serve<GenerateResponse>(() => Submit(WireMapping.ToSpec(request), s => engine.Submit(s), s => s.Interventions), output => WireMapping.GenerateMessages(output, engine.Model.Tokenizer, maxChunkBytes), cancellationToken);

    /// <summary>
    /// The named weights (names or globs, as GetWeights resolves them), each a CPU copy in the
    /// requested dtype the caller disposes, in model order; bad names are INVALID_ARGUMENT.
    /// </summary>
    public async IAsyncEnumerable<ModelWeight> GetWeightsAsync(IReadOnlyList<string> names, DType dtype = DType.Unspecified,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        IReadOnlyList<Runtime.Architectures.WeightEntry> weights;
        TorchSharp.torch.ScalarType type;
        try
        {
            type = WireMapping.WeightDType(dtype);
            weights = engine.Model.Transformer.Parameters.Resolve(names);
        }
        catch (Exception e)
        {
            throw Map(e, cancellationToken);
        }
        foreach (var weight in weights)
        {
            cancellationToken.ThrowIfCancellationRequested();
            TorchSharp.torch.Tensor copy;
            using (var scope = TorchSharp.torch.NewDisposeScope())
                copy = weight.Open().to(type, TorchSharp.torch.CPU).contiguous().clone().MoveToOuterDisposeScope();
            yield return new ModelWeight { Name = weight.Name, Tensor = copy };
            await Task.Yield();
        }
    }

    /// <summary>Submits a mapped spec; its intervention value tensors are freed when the request ends (or fails to submit).</summary>
    private static (EngineRequest Request, Action Release) Submit<TSpec>(TSpec spec, Func<TSpec, EngineRequest> submit, Func<TSpec, IEnumerable<Runtime.Hooks.Intervention>> interventions)
    {
        try
        {
            return (submit(spec), () => WireMapping.DisposeValues(interventions(spec)));
        }
        catch
        {
            WireMapping.DisposeValues(interventions(spec));
            throw;
        }
    }

    private async IAsyncEnumerable<T> Serve<T>(Func<(EngineRequest Request, Action Release)> submit, Func<EngineOutput, IEnumerable<T>> map,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        EngineRequest request;
        Action release;
        try
        {
            (request, release) = submit();
        }
        catch (Exception e)
        {
            throw Map(e, cancellationToken);
        }
        try
        {
            await using var outputs = request.ReadAllAsync(cancellationToken).GetAsyncEnumerator(cancellationToken);
            while (true)
            {
                bool more;
                try
                {
                    more = await outputs.MoveNextAsync().ConfigureAwait(false);
                }
                catch (Exception e)
                {
                    throw Map(e, cancellationToken);
                }
                if (!more)
                    yield break;
                foreach (var message in map(outputs.Current))
                    yield return message;
            }
        }
        finally
        {
            release();
        }
    }

    private Exception Map(Exception e, CancellationToken cancellationToken) =>
        e is OperationCanceledException && cancellationToken.IsCancellationRequested ? e : RpcErrors.ToRpc(e, logger);
}
