using Grpc.Net.Client;

namespace InterpMesh.Contracts;

/// <summary>gRPC channels as InterpMesh's own .NET clients (CLI, gateway, benchmarks) open them.</summary>
public static class Channels
{
    /// <summary>
    /// A channel tuned for activation streams: an 8 MiB initial HTTP/2 stream window (the 64 KiB
    /// default costs a quarter of the loopback throughput on large captures), messages up to 16 MiB.
    /// </summary>
    public static GrpcChannel ForAddress(string address) =>
        GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 16 << 20,
            HttpHandler = new SocketsHttpHandler
            {
                InitialHttp2StreamWindowSize = 8 << 20,
                EnableMultipleHttp2Connections = true,
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
            },
            DisposeHttpClient = true,
        });
}
