using Grpc.Core;
using InterpMesh.Runtime;

namespace InterpMesh.ModelService.Grpc;

/// <summary>Maps failures to gRPC statuses with messages that say what to fix.</summary>
internal static class RpcErrors
{
    public static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));

    public static RpcException ToRpc(Exception e) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException => new RpcException(new Status(StatusCode.Cancelled, "the request was cancelled or its deadline passed")),
        ArgumentException or ModelFormatException or FormatException or OverflowException => Invalid(e.Message),
        InvalidOperationException => new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)),
        _ => new RpcException(new Status(StatusCode.Internal, $"internal error: {e.Message}")),
    };
}
