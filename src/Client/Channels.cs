using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;

namespace InterpMesh.Client;

/// <summary>gRPC channels as InterpMesh's own .NET clients (CLI, gateway, client library, benchmarks) open them.</summary>
public static class Channels
{
    /// <summary>How often a <c>dns:///</c> channel looks the name up again, so pods added by a scale-up get calls.</summary>
    public static readonly TimeSpan DnsRefreshInterval = TimeSpan.FromSeconds(15);

    /// <summary>
    /// A channel tuned for activation streams: a 1 MiB initial HTTP/2 stream window (the 64 KiB
    /// default costs a quarter of the loopback throughput on large captures; 8 MiB buffered more than
    /// the pools keep and streamed 0.9× as fast as 1 MiB — docs/benchmarks.md; .NET grows the window
    /// on links with a longer round trip), messages up to 16 MiB.
    /// <para>
    /// <paramref name="address"/> is an <c>http(s)://host:port</c> URL (one server) or
    /// <c>dns:///host:port</c>: every address the name resolves to (in Kubernetes, the ready pods
    /// behind a headless Service) gets its own connection, calls are spread round-robin over them,
    /// and the name is resolved again every <see cref="DnsRefreshInterval"/> (and when a connection fails).
    /// </para>
    /// <para>
    /// Calls are retried by gRPC's own retry policy (<see cref="ChannelRetry"/>; <see cref="ChannelRetry.Default"/>
    /// when <paramref name="retry"/> is null, <see cref="ChannelRetry.None"/> for none): only while no
    /// response has started, waiting what the server's <c>grpc-retry-pushback-ms</c> trailer says
    /// (a negative value: not retried).
    /// </para>
    /// </summary>
    public static GrpcChannel ForAddress(string address, ChannelRetry? retry = null)
    {
        retry ??= ChannelRetry.Default;
        var options = new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 16 << 20,
            HttpHandler = new SocketsHttpHandler
            {
                InitialHttp2StreamWindowSize = 1 << 20,
                EnableMultipleHttp2Connections = true,
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
            },
            DisposeHttpClient = true,
            // grpc-dotnet caps every policy's attempts at this (5 by default); the policy is the limit here.
            MaxRetryAttempts = Math.Max(retry.MaxAttempts, 2),
            MaxRetryBufferPerCallSize = retry.MaxBufferPerCallBytes,
        };
        var config = new ServiceConfig();
        if (retry.Policy() is { } policy)
        {
            config.MethodConfigs.Add(new MethodConfig { Names = { MethodName.Default }, RetryPolicy = policy });
            // An artifact upload streams a body far larger than any retry buffer, and the gateway may
            // refuse it after the header while the client still writes: sent once, outside the policy
            // (a retried client stream that is refused mid-write could leave the writer waiting).
            config.MethodConfigs.Add(new MethodConfig
            {
                Names = { new MethodName { Service = Contracts.V1.ArtifactService.Descriptor.FullName, Method = "PutArtifact" } },
            });
        }
        if (IsDns(address))
        {
            // In-cluster plaintext, as the http:// form; the scheme carries no TLS choice, so say it.
            options.Credentials = ChannelCredentials.Insecure;
            config.LoadBalancingConfigs.Add(new RoundRobinConfig());
            options.ServiceProvider = DnsResolverProvider.Instance;
        }
        if (config.MethodConfigs.Count > 0 || config.LoadBalancingConfigs.Count > 0)
            options.ServiceConfig = config;
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

/// <summary>
/// The retry policy a channel from <see cref="Channels.ForAddress"/> gives every call (gRPC's
/// <c>ServiceConfig</c> retry policy, see gRFC A6). gRPC retries a call only before its response
/// has started (no headers or message received) and only while its request messages fit in the
/// retry buffer (<see cref="MaxBufferPerCallBytes"/>; beyond it the call is sent once). Between
/// attempts it waits the server's <c>grpc-retry-pushback-ms</c> when there is one (a negative
/// value means "do not retry"; a non-negative one is followed whatever the status), otherwise an
/// exponential, jittered backoff for the statuses this policy names. The call's deadline bounds the whole.
/// </summary>
public sealed class ChannelRetry
{
    /// <summary>
    /// For people's programs and the CLI: UNAVAILABLE (a replica going away, a connection refused)
    /// and RESOURCE_EXHAUSTED (a busy server or a rate limit, waiting what it asks), up to 5 attempts.
    /// </summary>
    public static ChannelRetry Default { get; } = new();

    /// <summary>No retries: every call is sent once and its status is the caller's to handle.</summary>
    public static ChannelRetry None { get; } = new() { MaxAttempts = 1 };

    /// <summary>Attempts in all, the first included (1 = no retries).</summary>
    public int MaxAttempts { get; init; } = 5;

    /// <summary>The backoff before the first retry when the server sends no pushback (randomised between 0 and it).</summary>
    public TimeSpan InitialBackoff { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>The longest backoff when the server sends no pushback.</summary>
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How much the backoff grows after each attempt.</summary>
    public double BackoffMultiplier { get; init; } = 2;

    /// <summary>Retry UNAVAILABLE that comes without a pushback.</summary>
    public bool RetryUnavailable { get; init; } = true;

    /// <summary>
    /// Retry RESOURCE_EXHAUSTED that comes without a pushback (with backoff). A refusal that carries a
    /// pushback is governed by it whatever this says: grpc-dotnet retries after a non-negative
    /// pushback on any status once the channel has a policy, and never after a negative one. To have
    /// every refusal reach the caller, use <see cref="None"/>.
    /// </summary>
    public bool RetryResourceExhausted { get; init; } = true;

    /// <summary>Request bytes a call keeps for sending again (gRPC's default, 1 MiB); a larger request is sent once.</summary>
    public long MaxBufferPerCallBytes { get; init; } = 1 << 20;

    internal RetryPolicy? Policy()
    {
        if (MaxAttempts < 2 || !(RetryUnavailable || RetryResourceExhausted))
            return null;
        var policy = new RetryPolicy
        {
            MaxAttempts = MaxAttempts,
            InitialBackoff = InitialBackoff,
            MaxBackoff = MaxBackoff,
            BackoffMultiplier = BackoffMultiplier,
        };
        if (RetryUnavailable)
            policy.RetryableStatusCodes.Add(StatusCode.Unavailable);
        if (RetryResourceExhausted)
            policy.RetryableStatusCodes.Add(StatusCode.ResourceExhausted);
        return policy;
    }
}
