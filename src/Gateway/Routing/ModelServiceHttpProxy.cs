using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Routing;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Routing;

/// <summary>
/// The ModelService RPCs that have a REST/JSON route (<c>google.api.http</c> in model_service.proto:
/// GetModelInfo, Tokenize, Detokenize, Run, Generate), as typed calls to the routed replica, for gRPC JSON
/// transcoding only. gRPC clients never reach this class: their calls keep going through
/// <see cref="ModelServiceForwarder"/> (its endpoint is ordered ahead of this service's gRPC endpoints,
/// <see cref="ModelServiceForwarding.MapModelServiceForwarding"/>), which passes messages on unparsed.
/// <para>
/// Transcoding has to parse messages anyway (JSON to protobuf and back), so a typed proxy costs
/// nothing the route does not already cost, and it reuses everything the gRPC path has: the call
/// passes the gateway's interceptors (<see cref="Security.AuthInterceptor"/>: the same key, role and
/// rate checks as gRPC), and the model is chosen by the same <c>interpmesh-model</c> header through
/// the same <see cref="ModelRouter"/>, with the forwarder's one retry on another replica for a call
/// that fails UNAVAILABLE before any response. Errors are the replica's status and message, which
/// transcoding turns into the matching HTTP status.
/// </para>
/// </summary>
public sealed class ModelServiceHttpProxy(ModelRouter router, IOptions<GatewayOptions> options, ILogger<ModelServiceHttpProxy> logger) : Contracts.V1.ModelService.ModelServiceBase
{
    private readonly TimeSpan callTimeout = TimeSpan.FromSeconds(options.Value.CallTimeoutSeconds);

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context) =>
        UnaryAsync(context, (client, call) => client.GetModelInfoAsync(request, call).ResponseAsync);

    public override Task<TokenizeResponse> Tokenize(TokenizeRequest request, ServerCallContext context) =>
        UnaryAsync(context, (client, call) => client.TokenizeAsync(request, call).ResponseAsync);

    public override Task<DetokenizeResponse> Detokenize(DetokenizeRequest request, ServerCallContext context) =>
        UnaryAsync(context, (client, call) => client.DetokenizeAsync(request, call).ResponseAsync);

    /// <summary>Streams the replica's messages as they come (transcoding writes each as one JSON line).</summary>
    public override Task Run(RunRequest request, IServerStreamWriter<RunResponse> responseStream, ServerCallContext context) =>
        StreamAsync(context, responseStream, (client, call) => client.Run(request, call));

    /// <summary>Streams each generation step as the replica produces it (one JSON line per message).</summary>
    public override Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context) =>
        StreamAsync(context, responseStream, (client, call) => client.Generate(request, call));

    /// <summary>
    /// Passes a server stream on message by message; a call that fails UNAVAILABLE before its first
    /// message goes once more to another replica (after one, the client has part of an answer, so it is not repeated).
    /// </summary>
    private async Task StreamAsync<T>(ServerCallContext context, IServerStreamWriter<T> responseStream,
        Func<Contracts.V1.ModelService.ModelServiceClient, CallOptions, AsyncServerStreamingCall<T>> send)
    {
        var pool = router.Resolve(context.RequestHeaders.GetValue(ModelRouter.ModelHeader));
        for (int attempt = 1; ; attempt++)
        {
            var replica = pool.Pick();
            bool wrote = false;
            try
            {
                using var call = send(Client(replica), Options(context));
                while (await call.ResponseStream.MoveNext(context.CancellationToken))
                {
                    await responseStream.WriteAsync(call.ResponseStream.Current);
                    wrote = true;
                }
                return;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !context.CancellationToken.IsCancellationRequested)
            {
                if (wrote || attempt >= pool.Attempts)
                    throw Unavailable(pool, replica, e);
                ReplicaPool.MarkDown(replica);
            }
        }
    }

    private async Task<T> UnaryAsync<T>(ServerCallContext context, Func<Contracts.V1.ModelService.ModelServiceClient, CallOptions, Task<T>> send)
    {
        var pool = router.Resolve(context.RequestHeaders.GetValue(ModelRouter.ModelHeader));
        for (int attempt = 1; ; attempt++)
        {
            var replica = pool.Pick();
            try
            {
                return await send(Client(replica), Options(context));
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !context.CancellationToken.IsCancellationRequested)
            {
                if (attempt >= pool.Attempts)
                    throw Unavailable(pool, replica, e);
                ReplicaPool.MarkDown(replica);
            }
        }
    }

    /// <summary>The forwarder's channel (no retry policy: the loops above are the only retry).</summary>
    private static Contracts.V1.ModelService.ModelServiceClient Client(Replica replica) => new(replica.Invoker);

    /// <summary>The gateway's call timeout (REST requests carry no gRPC deadline) and the client's cancellation; no request metadata (the API key stays here).</summary>
    private CallOptions Options(ServerCallContext context) =>
        new(deadline: DateTime.UtcNow + callTimeout, cancellationToken: context.CancellationToken);

    private RpcException Unavailable(ReplicaPool pool, Replica replica, RpcException e)
    {
        ReplicaPool.MarkDown(replica);
        logger.LogWarning("The model service for '{Model}' at {Address} is unavailable: {Detail}", pool.Model, replica.Address, e.Status.Detail);
        return new RpcException(new Status(StatusCode.Unavailable,
            $"the model service for '{pool.Model}' is unavailable; retry: the next call goes to another replica if there is one"));
    }
}
