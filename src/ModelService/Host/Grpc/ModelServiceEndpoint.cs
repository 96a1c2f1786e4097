using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.ModelService.Hosting;
using InterpMesh.ModelService.Wire;
using InterpMesh.Runtime;

namespace InterpMesh.ModelService.Grpc;

/// <summary>
/// The <c>interpmesh.v1.ModelService</c> implementation: maps protos to engine specs and engine
/// outputs to protos (<see cref="WireMapping"/>); the <see cref="ModelEngine"/> does the rest.
/// </summary>
public sealed class ModelServiceEndpoint(ModelHost host, Telemetry.ServiceMetrics metrics, ILogger<ModelServiceEndpoint> logger) : Contracts.V1.ModelService.ModelServiceBase
{
    private ModelEngine Engine => host.Engine
        ?? throw new RpcException(new Status(StatusCode.Unavailable, host.LoadError is null
            ? "the model is still loading; retry shortly"
            : "the model failed to load, so this service cannot answer; its log says why"));

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context) =>
        Task.FromResult(WireMapping.Info(Engine, host.Options.MaxChunkBytes));

    public override Task<TokenizeResponse> Tokenize(TokenizeRequest request, ServerCallContext context) => Guard(() =>
    {
        var tokenizer = Tokenizer();
        var response = new TokenizeResponse();
        foreach (var text in request.Texts)
        {
            var ids = new TokenIds();
            ids.Ids.AddRange(tokenizer.Encode(text));
            response.Tokens.Add(ids);
        }
        return Task.FromResult(response);
    });

    public override Task<DetokenizeResponse> Detokenize(DetokenizeRequest request, ServerCallContext context) => Guard(() =>
    {
        var tokenizer = Tokenizer();
        var response = new DetokenizeResponse();
        foreach (var ids in request.Tokens)
        {
            foreach (var id in ids.Ids)
            {
                if (id < 0 || id >= tokenizer.VocabSize)
                    throw new InvalidRequestException($"token id {id} is outside the vocabulary (0..{tokenizer.VocabSize - 1})");
            }
            response.Texts.Add(tokenizer.Decode(ids.Ids.ToList()));
        }
        return Task.FromResult(response);
    });

    private Runtime.Tokenization.ITextTokenizer Tokenizer() => Engine.Model.Tokenizer
        ?? throw new RpcException(new Status(StatusCode.FailedPrecondition, "this model has no tokenizer; send token ids instead of text"));

    public override Task Run(RunRequest request, IServerStreamWriter<RunResponse> responseStream, ServerCallContext context) =>
        Serve(() => WireMapping.ToSpec(request), spec => spec.Interventions, (engine, spec) => engine.Submit(spec), responseStream, context, (_, output) => output switch
        {
            CaptureOutput capture => WireMapping.Chunks(capture, host.Options.MaxChunkBytes).Select(c => new RunResponse { Activation = c }),
            RunOutcome outcome => [new RunResponse { Result = WireMapping.ToProto(outcome) }],
            _ => [],
        });

    public override Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context) =>
        Serve(() => WireMapping.ToSpec(request), spec => spec.Interventions, (engine, spec) => engine.Submit(spec), responseStream, context, (engine, output) => WireMapping.GenerateMessages(output, engine.Model.Tokenizer, host.Options.MaxChunkBytes));

    /// <summary>
    /// The one path of Run and Generate: map the request to an engine spec (its validation errors
    /// become INVALID_ARGUMENT), submit it, stream its outputs, map any failure to its gRPC status,
    /// and release the intervention tensors the mapping made.
    /// </summary>
    private async Task Serve<TSpec, TResponse>(Func<TSpec> toSpec, Func<TSpec, IEnumerable<Runtime.Hooks.Intervention>> interventions,
        Func<ModelEngine, TSpec, EngineRequest> submit, IServerStreamWriter<TResponse> responseStream, ServerCallContext context,
        Func<ModelEngine, EngineOutput, IEnumerable<TResponse>> map)
        where TSpec : class
    {
        var engine = Engine;
        TSpec? spec = null;
        try
        {
            spec = toSpec();
            await Stream(submit(engine, spec), responseStream, context, output => map(engine, output));
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e, logger);
        }
        finally
        {
            if (spec is not null)
                WireMapping.DisposeValues(interventions(spec));
        }
    }

    /// <summary>
    /// Writes a request's outputs to its client. A write that waits on a client who stopped reading
    /// ends when the engine gives up on the request (its stall time), with the engine's error.
    /// </summary>
    private async Task Stream<T>(EngineRequest request, IServerStreamWriter<T> responseStream, ServerCallContext context, Func<EngineOutput, IEnumerable<T>> map)
    {
        var ct = context.CancellationToken;
        Task? aborted = null;
        await foreach (var output in request.ReadAllAsync(ct))
        {
            if (output is CaptureOutput capture)
                metrics.ActivationBytes.Add(capture.Bytes);
            foreach (var message in map(output))
            {
                var write = responseStream.WriteAsync(message, ct);
                if (!write.IsCompleted)
                {
                    // A write waiting on a client that stopped reading ends when the engine gives up on
                    // the request; the call then ends with the engine's error (not a reset stream).
                    aborted ??= Task.Delay(Timeout.Infinite, request.Aborted);
                    if (await Task.WhenAny(write, aborted) != write)
                        throw request.Failure ?? new OperationCanceledException(ct);
                }
                await write;
            }
        }
    }

    private T Guard<T>(Func<T> action)
    {
        try
        {
            return action();
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e, logger);
        }
    }
}
