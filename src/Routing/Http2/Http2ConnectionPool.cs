namespace InterpMesh.Routing.Http2;

/// <summary>
/// The idle HTTP/2 connections to one target, each carrying one call at a time: a call takes the
/// most recently used one that is still good (or opens a new one) and gives it back when it ended
/// cleanly. Connections idle longer than <see cref="MaxIdle"/> are closed (before a replica's own
/// keep-alive timeout, 130 s for Kestrel, closes them under a call).
/// </summary>
internal sealed class Http2ConnectionPool(Uri target) : IAsyncDisposable
{
    /// <summary>How long a connection may wait unused.</summary>
    public static readonly TimeSpan MaxIdle = TimeSpan.FromSeconds(60);

    /// <summary>At most this many idle connections are kept (more are closed as they come back).</summary>
    private const int MaxIdleConnections = 256;

    private readonly List<Http2Connection> idle = [];
    private bool disposed;

    public Uri Target { get; } = target;

    /// <summary>Starts a call on a pooled connection (or a new one).</summary>
    public async Task<Http2Exchange> StartAsync(string path, IReadOnlyList<(string Name, string Value)> headers, CancellationToken ct)
    {
        while (true)
        {
            var connection = TakeIdle() ?? await Http2Connection.ConnectAsync(Target, ct);
            int streamId = connection.NextStreamId();
            if (streamId > 0)
            {
                try
                {
                    return Http2Exchange.Start(connection, this, streamId, path, headers);
                }
                catch
                {
                    await connection.DisposeAsync();
                    throw;
                }
            }
            await connection.DisposeAsync();
        }
    }

    private Http2Connection? TakeIdle()
    {
        long now = Environment.TickCount64;
        while (true)
        {
            Http2Connection? connection;
            lock (idle)
            {
                if (idle.Count == 0)
                    return null;
                connection = idle[^1];
                idle.RemoveAt(idle.Count - 1);
            }
            if (connection.Reusable(now, (long)MaxIdle.TotalMilliseconds))
                return connection;
            _ = connection.DisposeAsync().AsTask();
        }
    }

    /// <summary>Takes a connection back after a call that ended cleanly.</summary>
    public void Return(Http2Connection connection)
    {
        connection.IdleSince = Environment.TickCount64;
        lock (idle)
        {
            if (!disposed && idle.Count < MaxIdleConnections)
            {
                idle.Add(connection);
                return;
            }
        }
        _ = connection.DisposeAsync().AsTask();
    }

    /// <summary>Closes the connections idle for longer than <see cref="MaxIdle"/> (the oldest are first in the list).</summary>
    public void CloseIdle()
    {
        long now = Environment.TickCount64;
        List<Http2Connection> stale;
        lock (idle)
        {
            int count = 0;
            while (count < idle.Count && now - idle[count].IdleSince > (long)MaxIdle.TotalMilliseconds)
                count++;
            stale = idle.GetRange(0, count);
            idle.RemoveRange(0, count);
        }
        foreach (var connection in stale)
            _ = connection.DisposeAsync().AsTask();
    }

    public async ValueTask DisposeAsync()
    {
        List<Http2Connection> all;
        lock (idle)
        {
            disposed = true;
            all = [.. idle];
            idle.Clear();
        }
        foreach (var connection in all)
            await connection.DisposeAsync();
    }
}
