using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace InterpMesh.ServiceDefaults;

/// <summary>A host's call instruments: a request counter and a latency histogram, plus any tags of its own.</summary>
public interface ICallMetrics
{
    Counter<long> Requests { get; }

    Histogram<double> Duration { get; }

    /// <summary>Adds the host's own low-cardinality tags (the gateway: the caller's key name).</summary>
    void AddTags(ref TagList tags, ServerCallContext context)
    {
    }
}

/// <summary>
/// Counts every call and records its latency, tagged with the method (without the service) and
/// the final status code: unary, server-, client- and bidirectional streaming alike. One
/// interceptor for every host; each brings its instruments through <see cref="ICallMetrics"/>.
/// </summary>
public sealed class CallMetricsInterceptor(ICallMetrics metrics) : Interceptor
{
    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        => Measure(context, () => continuation(request, context));

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
        => Measure(context, async () =>
        {
            await continuation(request, responseStream, context).ConfigureAwait(false);
            return true;
        });

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
        => Measure(context, () => continuation(requestStream, context));

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
        => Measure(context, async () =>
        {
            await continuation(requestStream, responseStream, context).ConfigureAwait(false);
            return true;
        });

    private async Task<T> Measure<T>(ServerCallContext context, Func<Task<T>> call)
    {
        long started = Stopwatch.GetTimestamp();
        var status = StatusCode.OK;
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            status = e.StatusCode;
            throw;
        }
        finally
        {
            string method = context.Method[(context.Method.LastIndexOf('/') + 1)..];
            var tags = new TagList { { "method", method }, { "status", status.ToString() } };
            metrics.AddTags(ref tags, context);
            metrics.Requests.Add(1, tags);
            metrics.Duration.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, tags);
        }
    }
}
