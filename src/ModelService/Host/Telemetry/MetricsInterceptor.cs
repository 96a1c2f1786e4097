using System.Diagnostics;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace InterpMesh.ModelService.Telemetry;

/// <summary>Counts every RPC and records its latency, tagged with the method and the final status code.</summary>
public sealed class MetricsInterceptor(ServiceMetrics metrics) : Interceptor
{
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        var clock = Stopwatch.StartNew();
        var status = StatusCode.OK;
        try
        {
            return await continuation(request, context);
        }
        catch (RpcException e)
        {
            status = e.StatusCode;
            throw;
        }
        finally
        {
            Record(context.Method, status, clock.Elapsed.TotalSeconds);
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var clock = Stopwatch.StartNew();
        var status = StatusCode.OK;
        try
        {
            await continuation(request, responseStream, context);
        }
        catch (RpcException e)
        {
            status = e.StatusCode;
            throw;
        }
        finally
        {
            Record(context.Method, status, clock.Elapsed.TotalSeconds);
        }
    }

    private void Record(string fullMethod, StatusCode status, double seconds)
    {
        string method = fullMethod[(fullMethod.LastIndexOf('/') + 1)..];
        var tags = new TagList { { "method", method }, { "status", status.ToString() } };
        metrics.Requests.Add(1, tags);
        metrics.Duration.Record(seconds, tags);
    }
}
