using System.Threading.Channels;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Grpc;

namespace InterpMesh.ModelService.Batching;

/// <summary>One admitted, validated Run waiting for (or taking part in) a forward.</summary>
internal sealed class PendingRun
{
    public PendingRun(RunRequest request, List<IReadOnlyList<int>> rows, CaptureSpec captures, string key, CancellationToken cancellation)
    {
        Request = request;
        Rows = rows;
        Captures = captures;
        Key = key;
        Cancellation = cancellation;
        Trace = System.Diagnostics.Activity.Current?.Context ?? default;
    }

    /// <summary>The trace context of the gRPC call, so the forward's span can link to it.</summary>
    public System.Diagnostics.ActivityContext Trace { get; }

    public RunRequest Request { get; }
    public List<IReadOnlyList<int>> Rows { get; }
    public CaptureSpec Captures { get; }

    /// <summary>Runs with equal keys may share one forward.</summary>
    public string Key { get; }

    public CancellationToken Cancellation { get; }

    /// <summary>
    /// What this request's client receives. Small and bounded: the forward blocks on it while the
    /// client is slow, so the server never buffers a whole response.
    /// </summary>
    public Channel<RunResponse> Output { get; } = Channel.CreateBounded<RunResponse>(new BoundedChannelOptions(4) { SingleReader = true, SingleWriter = true });

    /// <summary>Set when the client went away mid-forward; the rest of the batch carries on without it.</summary>
    public bool Abandoned { get; set; }
}
