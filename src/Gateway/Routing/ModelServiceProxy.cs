using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Telemetry;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Routing;

/// <summary>
/// The ModelService API at the gateway: each call goes to a replica of the model named in the
/// <c>interpmesh-model</c> metadata, with a deadline. Unary calls (all read-only) are retried once
/// on another replica when one is unavailable; streams are not retried (their messages may already
/// have reached the client), the client gets UNAVAILABLE and its next call goes elsewhere.
/// </summary>
public sealed class ModelServiceProxy(ModelRouter router, IOptions<GatewayOptions> options, GatewayMetrics metrics) : Contracts.V1.ModelService.ModelServiceBase
{
    private readonly TimeSpan callTimeout = TimeSpan.FromSeconds(options.Value.CallTimeoutSeconds);

    private CallOptions Options(ServerCallContext context) => new(
        deadline: context.Deadline < DateTime.MaxValue ? context.Deadline : DateTime.UtcNow + callTimeout,
        cancellationToken: context.CancellationToken);

    private ReplicaPool Pool(ServerCallContext context) => router.Resolve(context.RequestHeaders.GetValue(ModelRouter.ModelHeader));

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context) =>
        Unary(context, (c, o) => c.GetModelInfoAsync(request, o));

    public override Task<TokenizeResponse> Tokenize(TokenizeRequest request, ServerCallContext context) =>
        Unary(context, (c, o) => c.TokenizeAsync(request, o));

    public override Task<DetokenizeResponse> Detokenize(DetokenizeRequest request, ServerCallContext context) =>
        Unary(context, (c, o) => c.DetokenizeAsync(request, o));

    public override Task Run(RunRequest request, IServerStreamWriter<RunResponse> responseStream, ServerCallContext context) =>
        Stream(context, (c, o) => c.Run(request, o), responseStream, m => m.Activation?.Data.Length ?? 0);

    public override Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context) =>
        Stream(context, (c, o) => c.Generate(request, o), responseStream, m => m.Activation?.Data.Length ?? 0);

    private async Task<T> Unary<T>(ServerCallContext context, Func<Contracts.V1.ModelService.ModelServiceClient, CallOptions, AsyncUnaryCall<T>> call)
    {
        var pool = Pool(context);
        int attempts = pool.Attempts;
        for (int attempt = 1; ; attempt++)
        {
            var replica = pool.Pick();
            try
            {
                return await call(replica.Client, Options(context));
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !context.CancellationToken.IsCancellationRequested)
            {
                ReplicaPool.MarkDown(replica);
                if (attempt >= attempts)
                    throw Unavailable(pool, replica, e);
            }
        }
    }

    private async Task Stream<T>(ServerCallContext context, Func<Contracts.V1.ModelService.ModelServiceClient, CallOptions, AsyncServerStreamingCall<T>> start,
        IServerStreamWriter<T> responseStream, Func<T, int> activationBytes)
    {
        var pool = Pool(context);
        var replica = pool.Pick();
        using var call = start(replica.Client, Options(context));
        long bytes = 0;
        try
        {
            await foreach (var message in call.ResponseStream.ReadAllAsync(context.CancellationToken))
            {
                bytes += activationBytes(message);
                await responseStream.WriteAsync(message, context.CancellationToken);
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !context.CancellationToken.IsCancellationRequested)
        {
            ReplicaPool.MarkDown(replica);
            throw Unavailable(pool, replica, e);
        }
        finally
        {
            metrics.ActivationBytes.Add(bytes);
        }
    }

    private static RpcException Unavailable(ReplicaPool pool, Replica replica, RpcException e) =>
        new(new Status(StatusCode.Unavailable,
            $"the model service for '{pool.Model}' at {replica.Address} is unavailable ({e.Status.Detail}); retry: the next call goes to another replica if there is one"), e.Trailers);
}
