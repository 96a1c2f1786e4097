using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;

namespace InterpMesh.Routing.Http2;

/// <summary>
/// One HTTP/2 connection to a replica, carrying one call at a time (<see cref="Http2Exchange"/>),
/// then pooled for the next (<see cref="Http2ConnectionPool"/>). With one stream per connection
/// nothing has to be demultiplexed: the call's reader reads the socket itself, and a response
/// message's bytes go from the socket straight into the memory the caller reads into (the gateway:
/// its client's response), with no buffer of the connection's in between for the bulk of them.
/// <para>
/// It advertises a 1 MiB stream window (16 MiB for the connection) and 256 KiB frames, so a replica
/// sends an activation stream in few, large DATA frames; it answers SETTINGS and PING, honours the
/// replica's windows and frame size when sending, and stops being reused after a GOAWAY, a reset or
/// any fault.
/// </para>
/// </summary>
internal sealed class Http2Connection : IAsyncDisposable
{
    /// <summary>The stream window advertised (as the gRPC channels: 1 MiB suits activation streams).</summary>
    public const int StreamWindow = 1 << 20;

    /// <summary>The connection window (larger than a stream's, so one call never waits on it).</summary>
    public const int ConnectionWindow = 16 << 20;

    /// <summary>The largest frame the replica may send.</summary>
    public const int MaxFrameSize = 256 << 10;

    /// <summary>The largest header block taken (HEADERS and CONTINUATION frames together).</summary>
    public const int MaxHeaderBlock = 64 << 10;

    private const int DefaultWindow = 65_535;
    private static readonly byte[] Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray();

    private readonly Socket socket;
    private readonly Stream stream;
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private readonly Lock windowLock = new();
    private byte[] buffer = new byte[64 << 10];
    private int start;
    private int end;
    private long connectionSendWindow = DefaultWindow;
    private int peerInitialWindow = DefaultWindow;
    private int peerMaxFrame = 16_384;
    private TaskCompletionSource windowOpened = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long connectionUnacked;
    private int nextStreamId = 1;
    private bool prefaceSeen;
    private int disposed;

    private Http2Connection(Socket socket, Stream stream, string scheme, string authority)
    {
        this.socket = socket;
        this.stream = stream;
        Scheme = scheme;
        Authority = authority;
    }

    public string Scheme { get; }

    public string Authority { get; }

    public HpackDecoder Decoder { get; } = new();

    /// <summary>Set when the connection must not carry another call (a GOAWAY, a fault, a call that did not end cleanly).</summary>
    public bool Spent { get; set; }

    /// <summary>When the connection was last given back to its pool (<see cref="Environment.TickCount64"/>).</summary>
    public long IdleSince { get; set; }

    /// <summary>
    /// Opens a connection to <paramref name="target"/> (<c>http://</c>: cleartext HTTP/2; <c>https://</c>: TLS
    /// with ALPN h2) and sends the preface and settings. A failure to connect is an <see cref="HttpRequestException"/>.
    /// </summary>
    public static async Task<Http2Connection> ConnectAsync(Uri target, CancellationToken ct)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        Stream? stream = null;
        try
        {
            try
            {
                // An IPv6 literal without its brackets (dns:/// endpoints resolve to such addresses).
                await socket.ConnectAsync(target.IdnHost.Trim('[', ']'), target.Port, ct);
            }
            catch (SocketException e)
            {
                throw new HttpRequestException($"{e.Message} ({target.Authority})", e);
            }
            stream = new NetworkStream(socket, ownsSocket: true);
            bool tls = target.Scheme == Uri.UriSchemeHttps;
            if (tls)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                stream = ssl;
                try
                {
                    await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                    {
                        TargetHost = target.IdnHost,
                        ApplicationProtocols = [SslApplicationProtocol.Http2],
                    }, ct);
                }
                catch (System.Security.Authentication.AuthenticationException e)
                {
                    throw new HttpRequestException($"TLS with {target.Authority} failed: {e.Message}", e);
                }
                if (ssl.NegotiatedApplicationProtocol != SslApplicationProtocol.Http2)
                    throw new HttpRequestException($"{target.Authority} does not offer HTTP/2 over TLS (ALPN h2)");
            }
            var connection = new Http2Connection(socket, stream, tls ? "https" : "http", target.Authority);
            await connection.SendPrefaceAsync(ct);
            return connection;
        }
        catch
        {
            if (stream is not null)
                await stream.DisposeAsync();
            socket.Dispose();
            throw;
        }
    }

    private async Task SendPrefaceAsync(CancellationToken ct)
    {
        // Preface; SETTINGS: no push, our stream window, our frame size; the connection window widened.
        var frames = new byte[Preface.Length + FrameHeader.Size + 3 * 6 + FrameHeader.Size + 4];
        Preface.CopyTo(frames, 0);
        var span = frames.AsSpan(Preface.Length);
        FrameHeader.Write(span, 18, FrameType.Settings, 0, 0);
        WriteSetting(span[9..], 0x2, 0);
        WriteSetting(span[15..], 0x4, StreamWindow);
        WriteSetting(span[21..], 0x5, MaxFrameSize);
        span = span[27..];
        FrameHeader.Write(span, 4, FrameType.WindowUpdate, 0, 0);
        BinaryPrimitives.WriteUInt32BigEndian(span[9..], ConnectionWindow - DefaultWindow);
        await stream.WriteAsync(frames, ct);

        static void WriteSetting(Span<byte> to, ushort id, uint value)
        {
            BinaryPrimitives.WriteUInt16BigEndian(to, id);
            BinaryPrimitives.WriteUInt32BigEndian(to[2..], value);
        }
    }

    /// <summary>
    /// Whether the pooled connection can carry another call: not spent, not idle too long, and nothing
    /// arrived while it was idle (the end of the connection, or a GOAWAY as a replica shuts down; a
    /// late window update costs a new connection, which is cheaper than a call failed on a closing one).
    /// </summary>
    public bool Reusable(long now, long maxIdleMs)
    {
        if (Spent || now - IdleSince > maxIdleMs || Volatile.Read(ref disposed) != 0 || end > start)
            return false;
        try
        {
            return !socket.Poll(0, SelectMode.SelectRead);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>A new stream identifier, or 0 when this connection has used them up.</summary>
    public int NextStreamId()
    {
        int id = nextStreamId;
        if (id > int.MaxValue - 2)
            return 0;
        nextStreamId += 2;
        return id;
    }

    /// <summary>The stream send window a new stream starts with (the replica's SETTINGS_INITIAL_WINDOW_SIZE).</summary>
    public int PeerInitialWindow
    {
        get
        {
            lock (windowLock)
                return peerInitialWindow;
        }
    }

    /// <summary>Writes <paramref name="frames"/> (whole frames) to the connection, one writer at a time.</summary>
    public async ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken ct)
    {
        await writeLock.WaitAsync(ct);
        try
        {
            await stream.WriteAsync(frames, ct);
        }
        catch
        {
            Spent = true;
            throw;
        }
        finally
        {
            writeLock.Release();
        }
    }

    /// <summary>
    /// Takes up to <paramref name="wanted"/> bytes of send window for <paramref name="stream"/>
    /// (its window and the connection's, bounded by the replica's frame size); 0 when either window is
    /// shut, with <paramref name="opened"/> completing when the next WINDOW_UPDATE or SETTINGS arrives.
    /// </summary>
    public int TakeSendWindow(Http2Exchange stream, int wanted, out Task opened)
    {
        lock (windowLock)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
            opened = windowOpened.Task;
            long n = Math.Min(Math.Min(wanted, peerMaxFrame), Math.Min(stream.SendWindow, connectionSendWindow));
            if (n <= 0)
                return 0;
            stream.SendWindow -= n;
            connectionSendWindow -= n;
            return (int)n;
        }
    }

    /// <summary>A WINDOW_UPDATE for <paramref name="stream"/> (null: the connection) applied.</summary>
    public void OpenSendWindow(Http2Exchange? stream, int increment)
    {
        lock (windowLock)
        {
            if (stream is null)
                connectionSendWindow += increment;
            else
                stream.SendWindow += increment;
            if (connectionSendWindow > int.MaxValue || (stream?.SendWindow ?? 0) > int.MaxValue)
                throw Protocol("a WINDOW_UPDATE took a flow-control window past 2^31-1");
            Signal();
        }
    }

    /// <summary>Counts bytes taken from the connection's window: the increment to send back once enough were (a sixteenth of the window), otherwise 0.</summary>
    public int ConnectionBytesConsumed(int bytes)
    {
        connectionUnacked += bytes;
        if (connectionUnacked < ConnectionWindow / 16)
            return 0;
        int ack = (int)connectionUnacked;
        connectionUnacked = 0;
        return ack;
    }

    private void Signal()
    {
        var opened = windowOpened;
        windowOpened = new(TaskCreationOptions.RunContinuationsAsynchronously);
        opened.TrySetResult();
    }

    /// <summary>Bytes read and not yet consumed.</summary>
    public int Buffered => end - start;

    /// <summary>The buffered bytes.</summary>
    public ReadOnlySpan<byte> BufferedSpan => buffer.AsSpan(start, end - start);

    /// <summary>Consumes <paramref name="count"/> buffered bytes.</summary>
    public void Consume(int count) => start += count;

    /// <summary>
    /// Reads until at least <paramref name="count"/> bytes are buffered, reading no more than
    /// <paramref name="most"/> in all when there is a choice (so that a large payload that follows can
    /// be read into its destination directly). The end of the connection is an <see cref="IOException"/>.
    /// </summary>
    public async ValueTask FillAsync(int count, int most, CancellationToken ct)
    {
        if (end - start >= count)
            return;
        if (start == end)
            start = end = 0;
        if (buffer.Length < count)
        {
            var larger = new byte[Math.Max(count, buffer.Length * 2)];
            buffer.AsSpan(start, end - start).CopyTo(larger);
            (buffer, end, start) = (larger, end - start, 0);
        }
        else if (buffer.Length - start < count)
        {
            buffer.AsSpan(start, end - start).CopyTo(buffer);
            (end, start) = (end - start, 0);
        }
        int limit = (int)Math.Min(buffer.Length, (long)start + Math.Max(count, most));
        while (end - start < count)
        {
            int read = await ReadSocketAsync(buffer.AsMemory(end, limit - end), ct);
            end += read;
        }
    }

    /// <summary>
    /// Takes the buffered frame header (at least <see cref="FrameHeader.Size"/> bytes must be buffered).
    /// The replica's first frame must be its SETTINGS: an HTTP/1.x answer instead says what to fix.
    /// </summary>
    public FrameHeader TakeFrameHeader()
    {
        var bytes = BufferedSpan[..FrameHeader.Size];
        if (!prefaceSeen)
        {
            if (bytes.StartsWith("HTTP/1."u8))
            {
                Spent = true;
                throw new IOException($"{Authority} answered in HTTP/1.x: the model service's endpoint must accept HTTP/2 without TLS (Kestrel: Protocols Http2)");
            }
            if ((FrameType)bytes[3] != FrameType.Settings)
                throw Protocol("the connection did not start with the server's SETTINGS");
            prefaceSeen = true;
        }
        start += FrameHeader.Size;
        return FrameHeader.Read(bytes);
    }

    /// <summary>Reads straight from the connection into <paramref name="destination"/> (nothing must be buffered).</summary>
    public ValueTask<int> ReadDirectAsync(Memory<byte> destination, CancellationToken ct) => ReadSocketAsync(destination, ct);

    private async ValueTask<int> ReadSocketAsync(Memory<byte> destination, CancellationToken ct)
    {
        int read;
        try
        {
            read = await stream.ReadAsync(destination, ct);
        }
        catch
        {
            Spent = true;
            throw;
        }
        if (read == 0)
        {
            Spent = true;
            throw new IOException("the model service closed the connection");
        }
        return read;
    }

    /// <summary>
    /// Handles a connection-level frame whose header was read (SETTINGS, PING, GOAWAY, WINDOW_UPDATE
    /// on stream 0, PRIORITY, or any frame of a stream no longer current); its payload is read here.
    /// Returns the GOAWAY's last stream identifier for a GOAWAY, otherwise -1.
    /// </summary>
    public async ValueTask<int> HandleConnectionFrameAsync(FrameHeader frame, CancellationToken ct)
    {
        if (frame.Length > MaxFrameSize)
            throw Protocol($"a {frame.Type} frame of {frame.Length} bytes exceeds the {MaxFrameSize} advertised");
        await FillAsync(frame.Length, frame.Length, ct);
        var payload = buffer.AsMemory(start, frame.Length);
        start += frame.Length;
        switch (frame.Type)
        {
            case FrameType.Settings when frame.StreamId == 0:
                if (frame.Has(FrameFlags.Ack))
                    return -1;
                if (frame.Length % 6 != 0)
                    throw Protocol("a SETTINGS frame's length is not a multiple of 6");
                ApplySettings(payload.Span);
                await SendAsync(SettingsAck, ct);
                return -1;
            case FrameType.Ping when frame.StreamId == 0:
                if (frame.Has(FrameFlags.Ack) || frame.Length != 8)
                    return -1;
                var pong = new byte[FrameHeader.Size + 8];
                FrameHeader.Write(pong, 8, FrameType.Ping, FrameFlags.Ack, 0);
                payload.Span.CopyTo(pong.AsSpan(FrameHeader.Size));
                await SendAsync(pong, ct);
                return -1;
            case FrameType.GoAway when frame.StreamId == 0:
                Spent = true;
                return frame.Length >= 8 ? (int)(BinaryPrimitives.ReadUInt32BigEndian(payload.Span) & 0x7FFF_FFFF) : 0;
            case FrameType.WindowUpdate when frame.StreamId == 0:
                OpenSendWindow(null, WindowIncrement(frame, payload.Span));
                return -1;
            case FrameType.Data:
                // A stream no longer current (reset, or ended early): its bytes still count against the connection's window.
                if (ConnectionBytesConsumed(frame.Length) is > 0 and var ack)
                    await SendAsync(WindowUpdate(0, ack), ct);
                return -1;
            case FrameType.PushPromise:
                throw Protocol("the model service sent PUSH_PROMISE, which the client disabled");
            default:
                return -1;
        }
    }

    /// <summary>The increment of a WINDOW_UPDATE frame (a zero increment is a protocol error).</summary>
    public static int WindowIncrement(FrameHeader frame, ReadOnlySpan<byte> payload)
    {
        if (frame.Length != 4)
            throw Protocol("a WINDOW_UPDATE frame is not 4 bytes long");
        int increment = (int)(BinaryPrimitives.ReadUInt32BigEndian(payload) & 0x7FFF_FFFF);
        return increment == 0 ? throw Protocol("a WINDOW_UPDATE frame has a zero increment") : increment;
    }

    private void ApplySettings(ReadOnlySpan<byte> payload)
    {
        for (int i = 0; i + 6 <= payload.Length; i += 6)
        {
            ushort id = BinaryPrimitives.ReadUInt16BigEndian(payload[i..]);
            uint value = BinaryPrimitives.ReadUInt32BigEndian(payload[(i + 2)..]);
            switch (id)
            {
                case 0x4 when value > int.MaxValue:
                    throw Protocol("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1");
                case 0x4:
                    lock (windowLock)
                    {
                        // A change applies to the open stream's window too (RFC 9113 §6.9.2).
                        int delta = (int)value - peerInitialWindow;
                        peerInitialWindow = (int)value;
                        if (CurrentStream is { } current)
                            current.SendWindow += delta;
                        Signal();
                    }
                    break;
                case 0x5 when value is < 16_384 or > 16_777_215:
                    throw Protocol($"SETTINGS_MAX_FRAME_SIZE {value} is outside 16384..16777215");
                case 0x5:
                    lock (windowLock)
                        peerMaxFrame = (int)value;
                    break;
            }
        }
    }

    /// <summary>The call on this connection now (its send window follows the replica's settings).</summary>
    public Http2Exchange? CurrentStream { get; set; }

    private static readonly byte[] SettingsAck = SettingsAckFrame();

    private static byte[] SettingsAckFrame()
    {
        var frame = new byte[FrameHeader.Size];
        FrameHeader.Write(frame, 0, FrameType.Settings, FrameFlags.Ack, 0);
        return frame;
    }

    /// <summary>A WINDOW_UPDATE frame.</summary>
    public static byte[] WindowUpdate(int streamId, int increment)
    {
        var frame = new byte[FrameHeader.Size + 4];
        FrameHeader.Write(frame, 4, FrameType.WindowUpdate, 0, streamId);
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(FrameHeader.Size), (uint)increment);
        return frame;
    }

    /// <summary>A breach of HTTP/2 by the replica, as the <see cref="IOException"/> a broken connection is.</summary>
    public static IOException Protocol(string detail) => new($"the model service broke the HTTP/2 protocol: {detail}");

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0)
            return;
        Spent = true;
        // A writer waiting for window learns the connection is gone.
        lock (windowLock)
            Signal();
        try
        {
            await stream.DisposeAsync();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            // Closing a connection that already broke.
        }
        socket.Dispose();
    }
}
