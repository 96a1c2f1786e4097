using Grpc.Core;
using Grpc.Net.Client;

namespace InterpMesh.Routing;

/// <summary>
/// Routes by model name to that model's model-service replicas. Calls are spread round-robin; a
/// replica that answered UNAVAILABLE is skipped for a few seconds. A <c>dns:///host:port</c>
/// endpoint (in Kubernetes, a headless Service) is one <see cref="Replica"/> whose channel balances
/// over every address the name resolves to and re-resolves it, so pods added by a scale-up are found.
/// </summary>
public sealed class ModelRouter : IDisposable
{
    /// <summary>Metadata key naming the model on ModelService calls through the gateway.</summary>
    public const string ModelHeader = Contracts.Headers.Model;

    private readonly Dictionary<string, ReplicaPool> pools;
    private readonly string? defaultModel;

    private readonly string host;

    /// <param name="models">Models by name with their replicas' endpoints (<c>Gateway:Models</c> or <c>Worker:Models</c>).</param>
    /// <param name="defaultModel">Used when a call names no model; null: the only model, if there is one.</param>
    /// <param name="host">Who routes, for error messages: "this gateway", "worker w-1".</param>
    public ModelRouter(IReadOnlyDictionary<string, ModelRoute> models, string? defaultModel, string host)
    {
        ArgumentNullException.ThrowIfNull(models);
        this.host = host;
        pools = models.ToDictionary(kv => kv.Key, kv => new ReplicaPool(kv.Key, kv.Value.Endpoints), StringComparer.Ordinal);
        this.defaultModel = defaultModel is { Length: > 0 } d ? d : pools.Count == 1 ? pools.Keys.First() : null;
    }

    public IReadOnlyCollection<string> Models => pools.Keys;

    /// <summary>The pool for <paramref name="model"/> (empty = the default model); errors list the configured models.</summary>
    public ReplicaPool Resolve(string? model)
    {
        if (string.IsNullOrEmpty(model))
        {
            return defaultModel is not null ? pools[defaultModel]
                : throw new RpcException(new Status(StatusCode.InvalidArgument,
                    $"name a model (metadata '{ModelHeader}'); {host} serves {string.Join(", ", pools.Keys)}"));
        }
        return pools.TryGetValue(model, out var pool) ? pool
            : throw new RpcException(new Status(StatusCode.NotFound, $"unknown model '{model}'; {host} serves {string.Join(", ", pools.Keys)}"));
    }

    public void Dispose()
    {
        foreach (var pool in pools.Values)
            pool.Dispose();
    }
}

/// <summary>The replicas of one model.</summary>
public sealed class ReplicaPool : IDisposable
{
    private static readonly TimeSpan DownFor = TimeSpan.FromSeconds(5);
    private readonly Replica[] replicas;
    private int next = -1;

    public ReplicaPool(string model, IEnumerable<string> endpoints)
    {
        Model = model;
        replicas = [.. endpoints.Select(e => new Replica(e))];
    }

    public string Model { get; }

    public IReadOnlyList<Replica> Replicas => replicas;

    /// <summary>
    /// Tries a unary call gets when replicas answer UNAVAILABLE: a second one if there is another
    /// replica, or a balanced one whose channel sends the retry to its next address.
    /// </summary>
    public int Attempts => replicas.Length > 1 || replicas.Any(r => r.Balanced) ? 2 : 1;

    /// <summary>The next replica in turn that is not marked down (or the next one, if all are).</summary>
    public Replica Pick() => RoundRobin.Next(replicas, ref next, static r => Volatile.Read(ref r.DownUntil));

    /// <summary>
    /// Skips <paramref name="replica"/> for a while. Not a balanced one: its channel already stops
    /// using the address that failed, and skipping it would skip all its healthy addresses too.
    /// </summary>
    public static void MarkDown(Replica replica)
    {
        if (!replica.Balanced)
            Volatile.Write(ref replica.DownUntil, Environment.TickCount64 + (long)DownFor.TotalMilliseconds);
    }

    public void Dispose()
    {
        foreach (var r in replicas)
            r.Dispose();
    }
}

/// <summary>
/// One model-service replica (or, for <c>dns:///</c>, every replica behind one name) and its connections:
/// <list type="bullet">
/// <item><see cref="Transport"/> carries the calls the gateway's forwarder passes through as HTTP/2
/// bodies, and <see cref="Channel"/> (no retry policy) those the gateway makes itself (REST): a
/// refusal goes back to the client with its <c>grpc-retry-pushback-ms</c> for the client's own policy
/// to honour, and the forwarder's one retry on UNAVAILABLE picks another replica — a retry here as
/// well would multiply the attempts and hold the client's call at the gateway.</item>
/// <item><see cref="Client"/> (opened at the first plugin call) carries the plugins' model calls, with
/// <see cref="PluginRetry"/>: a busy model service slows a job down rather than failing it.</item>
/// </list>
/// </summary>
public sealed class Replica : IDisposable
{
    /// <summary>
    /// The plugins' model calls retry RESOURCE_EXHAUSTED, waiting the service's pushback each time, up
    /// to 100 attempts (at the model service's 200 ms, with its admission wait, well over the 20 s a
    /// busy spell lasts) within the call's deadline. UNAVAILABLE is not retried on the channel:
    /// the worker's routed model client fails a unary call over to another replica, which a channel to
    /// one replica cannot do.
    /// </summary>
    public static readonly InterpMesh.Client.ChannelRetry PluginRetry = new() { MaxAttempts = 100, RetryUnavailable = false };

    internal long DownUntil;
    private readonly Lazy<GrpcChannel> pluginChannel;
    private readonly Lazy<Contracts.V1.ModelService.ModelServiceClient> client;

    public Replica(string address)
    {
        Address = address;
        Balanced = InterpMesh.Client.Channels.IsDns(address);
        Channel = InterpMesh.Client.Channels.ForAddress(address, InterpMesh.Client.ChannelRetry.None);
        Invoker = Channel.CreateCallInvoker();
        Transport = new ReplicaTransport(address);
        pluginChannel = new(() => InterpMesh.Client.Channels.ForAddress(address, PluginRetry));
        client = new(() => new Contracts.V1.ModelService.ModelServiceClient(pluginChannel.Value));
    }

    public string Address { get; }

    /// <summary>A <c>dns:///</c> endpoint: the channel resolves the name and balances over its addresses.</summary>
    public bool Balanced { get; }

    /// <summary>The HTTP/2 connections the forwarder passes calls through on, unparsed.</summary>
    public ReplicaTransport Transport { get; }

    /// <summary>The gateway's own channel to the replica (no retry policy).</summary>
    public GrpcChannel Channel { get; }

    /// <summary>The plugins' model client, on a channel with <see cref="PluginRetry"/>.</summary>
    public Contracts.V1.ModelService.ModelServiceClient Client => client.Value;

    /// <summary><see cref="Channel"/>'s invoker.</summary>
    public CallInvoker Invoker { get; }

    public void Dispose()
    {
        Channel.Dispose();
        Transport.Dispose();
        if (pluginChannel.IsValueCreated)
            pluginChannel.Value.Dispose();
    }
}

/// <summary>The replicas serving one model (<c>Gateway:Models:&lt;name&gt;</c>, <c>Worker:Models:&lt;name&gt;</c>).</summary>
public sealed class ModelRoute
{
    /// <summary>
    /// gRPC addresses; calls are spread over them. Either one server, <c>http://model-gpt2-0.model-gpt2:50051</c>,
    /// or <c>dns:///model-gpt2.interpmesh.svc.cluster.local:50051</c>: every address the name resolves to
    /// (the ready pods of a headless Service), balanced round-robin and re-resolved every 15 s.
    /// </summary>
    public List<string> Endpoints { get; set; } = [];
}

/// <summary>Checks of model routes that every host's options validator shares.</summary>
public static class ModelRoutes
{
    /// <summary>Every problem of <paramref name="models"/> and <paramref name="defaultModel"/>, each naming its key under <paramref name="section"/>.</summary>
    public static IEnumerable<string> Errors(string section, IReadOnlyDictionary<string, ModelRoute> models, string? defaultModel)
    {
        if (models.Count == 0)
            yield return $"{section}:Models is empty: configure at least one model, e.g. {section}:Models:gpt2:Endpoints:0=http://127.0.0.1:50051";
        foreach (var (model, route) in models)
        {
            if (route.Endpoints.Count == 0)
                yield return $"{section}:Models:{model}:Endpoints is empty";
            foreach (var e in route.Endpoints)
            {
                if (EndpointError(e) is { } error)
                    yield return $"{section}:Models:{model}:Endpoints has '{e}': {error}";
            }
        }
        if (defaultModel is { Length: > 0 } d && !models.ContainsKey(d))
            yield return $"{section}:DefaultModel '{d}' is not one of the configured models ({string.Join(", ", models.Keys)})";
    }

    /// <summary>What is wrong with a model endpoint, or null: an http(s) URL or <c>dns:///host:port</c>.</summary>
    public static string? EndpointError(string endpoint)
    {
        if (InterpMesh.Client.Channels.IsDns(endpoint))
            return DnsEndpointError(endpoint);
        return Uri.TryCreate(endpoint, UriKind.Absolute, out var u) && u.Scheme is "http" or "https" ? null
            : "not an http(s) URL (http://host:port) nor dns:///host:port";
    }

    private static string? DnsEndpointError(string endpoint)
    {
        const string Form = "use dns:///host:port, e.g. dns:///model-gpt2.interpmesh.svc.cluster.local:50051";
        if (!endpoint.StartsWith("dns:///", StringComparison.OrdinalIgnoreCase))
            return $"a dns endpoint names no DNS server (nothing between 'dns://' and the third '/'); {Form}";
        string target = endpoint["dns:///".Length..];
        if (target.Length == 0)
            return $"no host; {Form}";
        if (target.IndexOfAny(['/', '?', '#', '@', ' ']) >= 0)
            return $"'{target}' is not host:port (no path, query or user); {Form}";
        int colon = target.LastIndexOf(':');
        if (colon < 0 || (target.StartsWith('[') && colon < target.IndexOf(']', StringComparison.Ordinal)))
            return $"no port: the gateway cannot guess the model service's gRPC port; {Form}";
        string host = target[..colon], port = target[(colon + 1)..];
        if (host.Length == 0)
            return $"no host; {Form}";
        if (host.Contains(':', StringComparison.Ordinal) && !(host.StartsWith('[') && host.EndsWith(']')))
            return $"an IPv6 host goes in brackets, dns:///[::1]:50051; {Form}";
        if (!int.TryParse(port, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int p) || p is < 1 or > 65535)
            return $"port '{port}' is not a number from 1 to 65535; {Form}";
        return Uri.CheckHostName(host.Trim('[', ']')) == UriHostNameType.Unknown ? $"'{host}' is not a host name; {Form}" : null;
    }
}
