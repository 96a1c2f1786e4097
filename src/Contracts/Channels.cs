using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;

namespace InterpMesh.Contracts;

/// <summary>gRPC channels as InterpMesh's own .NET clients (CLI, gateway, benchmarks) open them.</summary>
public static class Channels
{
    /// <summary>How often a <c>dns:///</c> channel looks the name up again, so pods added by a scale-up get calls.</summary>
    public static readonly TimeSpan DnsRefreshInterval = TimeSpan.FromSeconds(15);

    /// <summary>
    /// A channel tuned for activation streams: an 8 MiB initial HTTP/2 stream window (the 64 KiB
    /// default costs a quarter of the loopback throughput on large captures), messages up to 16 MiB.
    /// <para>
    /// <paramref name="address"/> is an <c>http(s)://host:port</c> URL (one server) or
    /// <c>dns:///host:port</c>: every address the name resolves to (in Kubernetes, the ready pods
    /// behind a headless Service) gets its own connection, calls are spread round-robin over them,
    /// and the name is resolved again every <see cref="DnsRefreshInterval"/> (and when a connection fails).
    /// </para>
    /// </summary>
    public static GrpcChannel ForAddress(string address)
    {
        var options = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 16 << 20,
            HttpHandler = new SocketsHttpHandler
            {
                InitialHttp2StreamWindowSize = 8 << 20,
                EnableMultipleHttp2Connections = true,
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
            },
            DisposeHttpClient = true,
        };
        if (IsDns(address))
        {
            // In-cluster plaintext, as the http:// form; the scheme carries no TLS choice, so say it.
            options.Credentials = ChannelCredentials.Insecure;
            options.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            options.ServiceProvider = DnsResolverProvider.Instance;
        }
        return GrpcChannel.ForAddress(address, options);
    }

    /// <summary>Whether <paramref name="address"/> names a DNS-resolved, client-side balanced target (<c>dns:///host:port</c>).</summary>
    public static bool IsDns(string address) => address.StartsWith("dns:", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The one service a balanced channel asks its provider for: the resolver factories. The built-in
    /// <c>dns</c> resolver never refreshes on its own; this one does, every <see cref="DnsRefreshInterval"/>.
    /// </summary>
    private sealed class DnsResolverProvider : IServiceProvider
    {
        public static readonly DnsResolverProvider Instance = new();

        private readonly ResolverFactory[] factories = [new DnsResolverFactory(DnsRefreshInterval)];

        public object? GetService(Type serviceType) =>
            serviceType == typeof(IEnumerable<ResolverFactory>) ? factories : null;
    }
}
