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

    public override async Task Run(RunRequest request, IServerStreamWriter<RunResponse> responseStream, ServerCallContext context)
    {
        var engine = Engine;
        Engine.Requests.RunSpec? spec = null;
        try
        {
            spec = WireMapping.ToSpec(request);
            await Stream(engine.Submit(spec), responseStream, context, output => output switch
            {
                CaptureOutput capture => WireMapping.Chunks(capture, host.Options.MaxChunkBytes).Select(c => new RunResponse { Activation = c }),
                RunOutcome outcome => [new RunResponse { Result = WireMapping.ToProto(outcome) }],
                _ => [],
            });
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e, logger);
        }
        finally
        {
            if (spec is not null)
                WireMapping.DisposeValues(spec.Interventions);
        }
    }

    public override async Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context)
    {
        var engine = Engine;
        var tokenizer = engine.Model.Tokenizer;
        Engine.Requests.GenerateSpec? spec = null;
        try
        {
            spec = WireMapping.ToSpec(request);
            await Stream(engine.Submit(spec), responseStream, context, output => output switch
            {
                CaptureOutput capture => WireMapping.Chunks(capture, host.Options.MaxChunkBytes).Select(c => new GenerateResponse { Step = capture.Step, Activation = c }),
                GenerateStep step => [WireMapping.ToProto(step, tokenizer)],
                _ => [],
            });
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e, logger);
        }
        finally
        {
            if (spec is not null)
                WireMapping.DisposeValues(spec.Interventions);
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
