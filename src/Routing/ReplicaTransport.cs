using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using InterpMesh.Routing.Http2;

namespace InterpMesh.Routing;

/// <summary>
/// The HTTP/2 connections a forwarder reaches one replica over, where it reads and writes gRPC
/// bodies itself (no gRPC client or HttpClient in between: a response's bytes go from the socket
/// into the forwarder's memory, one call per connection at a time; see <see cref="Http2Exchange"/>).
/// An <c>http(s)://</c> endpoint is one target. A <c>dns:///host:port</c> endpoint is every address
/// the name resolves to, looked up again every <see cref="InterpMesh.Client.Channels.DnsRefreshInterval"/>
/// (and soon after an address fails), calls spread round-robin over the addresses not marked failed —
/// as the gRPC channel's balancer does for the plugins' calls.
/// </summary>
public sealed class ReplicaTransport : IDisposable
{
    private static readonly TimeSpan FailedFor = TimeSpan.FromSeconds(5);
    private readonly ConcurrentDictionary<Uri, Http2ConnectionPool> pools = new();
    private readonly Timer closeIdle;
    private readonly Func<string, CancellationToken, Task<IPAddress[]>> resolve;
    private readonly Uri? fixedTarget;
    private readonly string? host;
    private readonly int port;
    private readonly SemaphoreSlim resolving = new(1, 1);
    private Target[] targets = [];
    private long resolvedAt = long.MinValue;
    private int next = -1;

    /// <param name="address">An <c>http(s)://</c> URL or <c>dns:///host:port</c>, as <see cref="ModelRoutes.EndpointError"/> accepts.</param>
    /// <param name="resolve">Looks a host name up (DNS when null).</param>
    public ReplicaTransport(string address, Func<string, CancellationToken, Task<IPAddress[]>>? resolve = null)
    {
        this.resolve = resolve ?? Dns.GetHostAddressesAsync;
        closeIdle = new Timer(_ => CloseIdle(), null, Http2ConnectionPool.MaxIdle / 3, Http2ConnectionPool.MaxIdle / 3);
        if (!InterpMesh.Client.Channels.IsDns(address))
        {
            fixedTarget = new Uri(address.EndsWith('/') ? address : address + "/");
            return;
        }
        // dns:///host:port, as ModelRoutes validated it.
        string target = address["dns:///".Length..];
        int colon = target.LastIndexOf(':');
        host = target[..colon].Trim('[', ']');
        port = int.Parse(target[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Starts a gRPC call (a POST of <paramref name="path"/> with <paramref name="headers"/>) on
    /// <paramref name="target"/> (from <see cref="NextAsync"/>), over a pooled HTTP/2 connection of
    /// its own. A target that cannot be reached is an <see cref="HttpRequestException"/>.
    /// </summary>
    public Task<Http2Exchange> StartAsync(Uri target, string path, IReadOnlyList<(string Name, string Value)> headers, CancellationToken ct) =>
        pools.GetOrAdd(target, static t => new Http2ConnectionPool(t)).StartAsync(path, headers, ct);

    private void CloseIdle()
    {
        foreach (var pool in pools.Values)
            pool.CloseIdle();
    }

    /// <summary>The addresses the name resolved to at the last look-up (empty for an http(s) endpoint or before the first call).</summary>
    public IReadOnlyList<Uri> Resolved => [.. Volatile.Read(ref targets).Select(t => t.Uri)];

    /// <summary>
    /// The base URI of the next call: the endpoint itself, or the next resolved address not marked
    /// failed (any, if all are). A name that resolves to nothing is an <see cref="HttpRequestException"/>
    /// (the replica is unavailable).
    /// </summary>
    public async ValueTask<Uri> NextAsync(CancellationToken ct)
    {
        if (fixedTarget is not null)
            return fixedTarget;
        var all = Volatile.Read(ref targets);
        if (all.Length == 0 || Stale())
            all = await ResolveAsync(ct);
        return RoundRobin.Next(all, ref next, static t => Volatile.Read(ref t.FailedUntil)).Uri;
    }

    /// <summary>
    /// Notes that <paramref name="target"/> could not be reached: it is skipped for a while, and a
    /// name is looked up again at its next call (the pod behind the address may have gone).
    /// </summary>
    public void Failed(Uri target)
    {
        foreach (var t in Volatile.Read(ref targets))
        {
            if (t.Uri == target)
                Volatile.Write(ref t.FailedUntil, Environment.TickCount64 + (long)FailedFor.TotalMilliseconds);
        }
        if (host is not null)
            Volatile.Write(ref resolvedAt, long.MinValue);
    }

    /// <summary>Whether the name is due to be looked up again: never looked up, looked up too long ago, or an address failed since.</summary>
    private bool Stale()
    {
        long at = Volatile.Read(ref resolvedAt);
        return at == long.MinValue || Environment.TickCount64 - at > (long)InterpMesh.Client.Channels.DnsRefreshInterval.TotalMilliseconds;
    }

    private async Task<Target[]> ResolveAsync(CancellationToken ct)
    {
        await resolving.WaitAsync(ct);
        try
        {
            var current = Volatile.Read(ref targets);
            if (current.Length > 0 && !Stale())
                return current;
            IPAddress[] addresses;
            try
            {
                addresses = await resolve(host!, ct);
            }
            catch (SocketException e)
            {
                if (current.Length > 0)
                    return current;
                throw new HttpRequestException($"'{host}' does not resolve ({e.SocketErrorCode})", e);
            }
            if (addresses.Length == 0)
            {
                if (current.Length > 0)
                    return current;
                throw new HttpRequestException($"'{host}' resolves to no address");
            }
            // Addresses kept from the last look-up keep their failure marks.
            var resolved = addresses.Distinct().Select(a => new Uri($"http://{(a.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{a}]" : a.ToString())}:{port}/"))
                .Select(u => current.FirstOrDefault(t => t.Uri == u) ?? new Target(u)).ToArray();
            Volatile.Write(ref targets, resolved);
            Volatile.Write(ref resolvedAt, Environment.TickCount64);
            return resolved;
        }
        finally
        {
            resolving.Release();
        }
    }

    public void Dispose()
    {
        closeIdle.Dispose();
        foreach (var pool in pools.Values)
            pool.DisposeAsync().AsTask().GetAwaiter().GetResult();
        resolving.Dispose();
    }

    private sealed class Target(Uri uri)
    {
        public Uri Uri { get; } = uri;
        public long FailedUntil;
    }
}
