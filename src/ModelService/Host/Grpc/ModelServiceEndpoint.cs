using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.ModelService.Hosting;
using InterpMesh.ModelService.Wire;
using InterpMesh.Runtime;
using Microsoft.AspNetCore.Http.Features;

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

    /// <summary>
    /// Each engine's info, built once: nothing in it changes while that engine serves, and building it
    /// (the hook catalogue) took most of a call's time. The endpoint is made per call, so the cache is static.
    /// </summary>
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ModelEngine, ModelInfo> Infos = [];

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context) =>
        Task.FromResult(Infos.GetValue(Engine, engine => WireMapping.Info(engine, host.Options.MaxChunkBytes)));

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
    /// Streams the named weights one after another, each copied off the device and chunked as it is
    /// reached (<see cref="WireMapping.Chunks(Runtime.Architectures.WeightEntry, TorchSharp.torch.ScalarType, int)"/>).
    /// Reads the loaded weights in place, beside any forward (they are never written after loading).
    /// </summary>
    public override async Task GetWeights(GetWeightsRequest request, IServerStreamWriter<GetWeightsResponse> responseStream, ServerCallContext context)
    {
        var engine = Engine;
        try
        {
            var dtype = WireMapping.WeightDType(request.Dtype);
            var weights = engine.Model.Transformer.Parameters.Resolve(request.Names);
            foreach (var weight in weights)
            {
                foreach (var chunk in WireMapping.Chunks(weight, dtype, host.Options.MaxChunkBytes))
                {
                    await WriteWithinStallTime(responseStream, new GetWeightsResponse { Chunk = chunk }, context);
                }
            }
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e, logger);
        }
    }

    /// <summary>
    /// Writes one message of a call that has no engine request to give up on it: a client that reads
    /// nothing for the stall time ends the call with RESOURCE_EXHAUSTED, after its pending write has
    /// settled (<see cref="Settle"/>), so that a stalled reader does not hold a weight's copy forever.
    /// </summary>
    private async Task WriteWithinStallTime<T>(IServerStreamWriter<T> responseStream, T message, ServerCallContext context)
    {
        var write = responseStream.WriteAsync(message, context.CancellationToken);
        if (!write.IsCompleted)
        {
            var stall = TimeSpan.FromSeconds(host.Options.StallTimeoutSeconds);
            try
            {
                await write.WaitAsync(stall, context.CancellationToken);
            }
            catch (TimeoutException)
            {
                await Settle(write, context);
                throw new RequestLimitException($"the client read nothing for {stall.TotalSeconds:0.##} s (ModelService:StallTimeoutSeconds); read the stream as it arrives");
            }
        }
        await write;
    }

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
        Task? stranded = null;
        await using (var outputs = request.ReadAllAsync(ct).GetAsyncEnumerator(ct))
        {
            while (stranded is null && await outputs.MoveNextAsync())
            {
                var output = outputs.Current;
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
                        {
                            stranded = write;
                            break;
                        }
                    }
                    await write;
                }
                // Every message of it was written (serialized into the response): its buffer can serve the next capture.
                if (stranded is null && output is CaptureOutput sent)
                    sent.Release();
            }
        }
        // Leaving the engine's enumeration above gave the request's admission slot back.
        if (stranded is not null)
        {
            await Settle(stranded, context);
            throw request.Failure ?? new OperationCanceledException(ct);
        }
    }

    /// <summary>
    /// Waits for a response write that the client is not reading before the call may end. The call must
    /// not end with a write still pending on its response: gRPC would go on to complete that response
    /// underneath the write, and Kestrel pools a finished stream's objects for the connection's next
    /// streams. In CI the next Generate on the same connection then waited forever for its headers: the
    /// hang dump showed its server side running on the stalled call's pooled stream and HttpContext,
    /// failing to read its request with "Http2OutputProducer has completed." before our method ran,
    /// and Kestrel treating it as aborted (status 499) with no reset sent to the client. The write
    /// completes when the client reads again, or when it goes away; a client that
    /// reads nothing for another stall time (at least 10 s) has its stream reset with ENHANCE_YOUR_CALM
    /// (gRPC's RESOURCE_EXHAUSTED), which ends the write.
    /// </summary>
    private async Task Settle(Task write, ServerCallContext context)
    {
        var grace = TimeSpan.FromSeconds(Math.Max(host.Options.StallTimeoutSeconds, 10));
        try
        {
            await write.WaitAsync(grace, context.CancellationToken);
            return;
        }
        catch (TimeoutException)
        {
            Reset(context);
        }
        catch (Exception)
        {
            // The write failed or the client went away (which ends the write too): nothing is left pending.
        }
        try
        {
            await write.WaitAsync(grace);
        }
        catch (TimeoutException)
        {
            logger.LogWarning("A response write was still pending {Seconds} s after its stream was reset", grace.TotalSeconds);
        }
        catch (Exception)
        {
            // The write ended with the stream, as it should.
        }
    }

    /// <summary>HTTP/2's ENHANCE_YOUR_CALM error code, which gRPC clients read as RESOURCE_EXHAUSTED.</summary>
    private const int EnhanceYourCalm = 0xB;

    private static void Reset(ServerCallContext context)
    {
        Microsoft.AspNetCore.Http.HttpContext http;
        try
        {
            http = context.GetHttpContext();
        }
        catch (InvalidOperationException)
        {
            // Not a call hosted by ASP.NET Core (a test driving the endpoint): there is no stream to reset.
            return;
        }
        http.Features.Get<IHttpResetFeature>()?.Reset(EnhanceYourCalm);
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
