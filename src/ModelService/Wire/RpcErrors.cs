using Grpc.Core;
using InterpMesh.Contracts;
using InterpMesh.Engine;
using InterpMesh.Runtime;
using Microsoft.Extensions.Logging;

namespace InterpMesh.ModelService.Wire;

/// <summary>
/// Maps failures to gRPC statuses. Only the engine's and runtime's own request errors are the
/// client's fault (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for limits, with the standard
/// <c>grpc-retry-pushback-ms</c> trailer: the busy engine's wait, or -1 "do not retry" for a
/// per-request limit); anything else is a bug or an
/// environment failure: INTERNAL with a short message — never a stack, a native trace or a path.
/// </summary>
internal static class RpcErrors
{
    public static RpcException ToRpc(Exception e, ILogger? logger = null) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException => new RpcException(new Status(StatusCode.Cancelled, "the request was cancelled or its deadline passed")),
        EngineBusyException busy => new RpcException(new Status(StatusCode.ResourceExhausted, busy.Message),
            RetryPushback.After(TimeSpan.FromMilliseconds(busy.RetryAfterMs))),
        EngineStoppedException stopped => new RpcException(new Status(StatusCode.Unavailable, stopped.Message)),
        // Over a per-request limit (batch, tokens, capture budget, a stalled reader): sending the same
        // request again meets the same limit, so clients are told not to retry.
        RequestLimitException limit => new RpcException(new Status(StatusCode.ResourceExhausted, limit.Message), RetryPushback.Never()),
        InvalidRequestException invalid => new RpcException(new Status(StatusCode.InvalidArgument, invalid.Message)),
        _ => Internal(e, logger),
    };

    private static RpcException Internal(Exception e, ILogger? logger)
    {
        string reference = Guid.NewGuid().ToString("N")[..12];
        if (logger is not null && logger.IsEnabled(LogLevel.Error))
            logger.LogError(e, "Internal error {Reference}", reference);
        return new RpcException(new Status(StatusCode.Internal,
            $"the model service failed while handling this request (an internal error, reference {reference} in the server log); the service keeps serving"));
    }
}
