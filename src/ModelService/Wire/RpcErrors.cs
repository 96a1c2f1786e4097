using Grpc.Core;
using InterpMesh.Engine;
using InterpMesh.Runtime;
using Microsoft.Extensions.Logging;

namespace InterpMesh.ModelService.Wire;

/// <summary>
/// Maps failures to gRPC statuses. Only the engine's and runtime's own request errors are the
/// client's fault (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for limits); anything else is a bug or an
/// environment failure: INTERNAL with a short message — never a stack, a native trace or a path.
/// </summary>
internal static class RpcErrors
{
    public static RpcException ToRpc(Exception e, ILogger? logger = null) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException => new RpcException(new Status(StatusCode.Cancelled, "the request was cancelled or its deadline passed")),
        EngineBusyException busy => new RpcException(new Status(StatusCode.ResourceExhausted, busy.Message),
            new Metadata { { "retry-after-ms", busy.RetryAfterMs.ToString(System.Globalization.CultureInfo.InvariantCulture) } }),
        EngineStoppedException stopped => new RpcException(new Status(StatusCode.Unavailable, stopped.Message)),
        RequestLimitException limit => new RpcException(new Status(StatusCode.ResourceExhausted, limit.Message)),
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
