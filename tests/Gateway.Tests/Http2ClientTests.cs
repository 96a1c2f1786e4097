using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using InterpMesh.Routing;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// The gateway's own HTTP/2 client (<see cref="InterpMesh.Routing.Http2.Http2Exchange"/>, through
/// <see cref="ReplicaTransport.StartAsync"/>) against a scripted server on loopback that writes the
/// frames Kestrel does not send on its own: padding, CONTINUATION, PING, resets, GOAWAY, a small
/// stream window, a connection closed mid-body. Header blocks are written by hand from RFC 7541's
/// representations, not by the client's encoder. The forwarding tests cover the client against Kestrel.
/// </summary>
public sealed class Http2ClientTests
{
    private static readonly (string, string)[] GrpcHeaders = [("content-type", "application/grpc"), ("te", "trailers")];

    /// <summary>:status 200 (static index 8), content-type (static name 31) application/grpc.</summary>
    private static readonly byte[] OkHeaders = [0x88, 0x0f, 0x10, 16, .. "application/grpc"u8];

    /// <summary>grpc-status: 0 and grpc-message: fine, as literals with new names.</summary>
    private static readonly byte[] OkTrailers = [0x00, 11, .. "grpc-status"u8, 1, (byte)'0', 0x00, 12, .. "grpc-message"u8, 4, .. "fine"u8];

    [Fact]
    public async Task Padding_continuation_ping_and_settings_are_handled_and_the_connection_is_reused()
    {
        await using var server = new ScriptedServer();
        var serve = server.RunAsync(async peer =>
        {
            for (int call = 0; call < 2; call++)
            {
                var (headers, request) = await peer.ReadRequestAsync();
                Assert.Equal(1 + 2 * call, headers.StreamId);
                Assert.Equal("hello"u8.ToArray(), request);
                int id = headers.StreamId;
                // Response headers split over HEADERS (padded) and CONTINUATION.
                await peer.WriteAsync(1, 0x8, id, [3, .. OkHeaders[..2], 0, 0, 0]);
                await peer.WriteAsync(9, 0x4, id, OkHeaders[2..]);
                await peer.WriteAsync(6, 0, 0, "pingpong"u8.ToArray());
                await peer.WriteAsync(4, 0, 0, Setting(0x5, 32_768));
                // A padded DATA frame, then an unpadded one.
                await peer.WriteAsync(0, 0x8, id, [4, .. "abcdef"u8, 0, 0, 0, 0]);
                await peer.WriteAsync(0, 0, id, "ghij"u8.ToArray());
                await peer.WriteAsync(1, 0x5, id, OkTrailers);
                Assert.Equal("pingpong"u8.ToArray(), await peer.ExpectAsync(6, flags: 0x1));
                await peer.ExpectAsync(4, flags: 0x1);
            }
        });
        var transport = new ReplicaTransport(server.Address);
        for (int call = 0; call < 2; call++)
        {
            await using var exchange = await transport.StartAsync(await transport.NextAsync(default), "/x.Y/Z", GrpcHeaders, default);
            await exchange.WriteAsync("hello"u8.ToArray(), endStream: true, default);
            await exchange.ReadHeadersAsync(default);
            Assert.Equal(200, exchange.StatusCode);
            Assert.Contains(("content-type", "application/grpc"), exchange.Headers);
            var body = new MemoryStream();
            await exchange.Body.CopyToAsync(body);
            Assert.Equal("abcdefghij", Encoding.ASCII.GetString(body.ToArray()));
            Assert.Equal([("grpc-status", "0"), ("grpc-message", "fine")], exchange.Trailers!);
        }
        transport.Dispose();
        await serve;
        Assert.Equal(1, server.Connections);
    }

    [Fact]
    public async Task A_body_larger_than_the_window_arrives_whole_as_the_client_opens_its_window()
    {
        const int size = 3 << 20;
        var payload = new byte[size];
        new Random(7).NextBytes(payload);
        await using var server = new ScriptedServer();
        var serve = server.RunAsync(async peer =>
        {
            var (headers, _) = await peer.ReadRequestAsync();
            await peer.WriteAsync(1, 0x4, headers.StreamId, OkHeaders);
            // Send no more than the window the client advertised, then wait for it to open.
            long window = InterpMesh.Routing.Http2.Http2Connection.StreamWindow;
            int sent = 0;
            while (sent < size)
            {
                while (window == 0)
                    window += await peer.ExpectWindowUpdateAsync(headers.StreamId);
                int n = (int)Math.Min(Math.Min(window, 200_000), size - sent);
                await peer.WriteAsync(0, 0, headers.StreamId, payload[sent..(sent + n)]);
                sent += n;
                window -= n;
            }
            await peer.WriteAsync(1, 0x5, headers.StreamId, OkTrailers);
        });
        var transport = new ReplicaTransport(server.Address);
        var exchange = await transport.StartAsync(await transport.NextAsync(default), "/x.Y/Z", GrpcHeaders, default);
        await exchange.WriteAsync("hello"u8.ToArray(), endStream: true, default);
        await exchange.ReadHeadersAsync(default);
        var received = new byte[size];
        await exchange.Body.ReadExactlyAsync(received);
        Assert.Equal(0, await exchange.Body.ReadAsync(new byte[1]));
        Assert.True(payload.AsSpan().SequenceEqual(received));
        await exchange.DisposeAsync();
        transport.Dispose();
        await serve;
    }

    [Fact]
    public async Task A_request_larger_than_the_servers_window_waits_for_its_window_updates()
    {
        var request = new byte[200_000];
        new Random(3).NextBytes(request);
        await using var server = new ScriptedServer(initialWindow: 16_384, maxFrame: 16_384);
        var serve = server.RunAsync(async peer =>
        {
            var (headers, body) = await peer.ReadRequestAsync(grantWindow: true);
            Assert.True(request.AsSpan().SequenceEqual(body));
            Assert.All(peer.DataFrameLengths, n => Assert.True(n <= 16_384, $"a {n}-byte DATA frame"));
            await peer.WriteAsync(1, 0x5, headers.StreamId, [0x88, .. OkTrailers]);
        });
        var transport = new ReplicaTransport(server.Address);
        var exchange = await transport.StartAsync(await transport.NextAsync(default), "/x.Y/Z", GrpcHeaders, default);
        var write = exchange.WriteAsync(request, endStream: true, default).AsTask();
        await exchange.ReadHeadersAsync(default);
        await write;
        Assert.True(exchange.ResponseEnded);
        Assert.Contains(("grpc-status", "0"), exchange.Headers);
        await exchange.DisposeAsync();
        transport.Dispose();
        await serve;
    }

    [Theory]
    [InlineData("reset", "reset the stream (CANCEL)")]
    [InlineData("goaway", "did not take this call")]
    [InlineData("close", "closed the connection")]
    public async Task A_stream_the_server_breaks_off_is_an_IOException_that_says_how(string how, string expected)
    {
        await using var server = new ScriptedServer();
        var serve = server.RunAsync(async peer =>
        {
            var (headers, _) = await peer.ReadRequestAsync();
            int id = headers.StreamId;
            if (how == "goaway")
            {
                await peer.WriteAsync(7, 0, 0, [0, 0, 0, 0, 0, 0, 0, 0]);
                return;
            }
            await peer.WriteAsync(1, 0x4, id, OkHeaders);
            await peer.WriteAsync(0, 0, id, "partial"u8.ToArray());
            if (how == "reset")
                await peer.WriteAsync(3, 0, id, [0, 0, 0, 8]);
            else
                peer.Close();
        });
        var transport = new ReplicaTransport(server.Address);
        var exchange = await transport.StartAsync(await transport.NextAsync(default), "/x.Y/Z", GrpcHeaders, default);
        await exchange.WriteAsync("hello"u8.ToArray(), endStream: true, default);
        var e = await Assert.ThrowsAsync<IOException>(async () =>
        {
            await exchange.ReadHeadersAsync(default);
            await exchange.Body.CopyToAsync(Stream.Null);
        });
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        await exchange.DisposeAsync();
        transport.Dispose();
        await serve;
    }

    [Fact]
    public async Task A_server_answering_in_http1_is_an_IOException_that_says_to_enable_http2()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var serve = Task.Run(async () =>
        {
            using var socket = await listener.AcceptSocketAsync();
            await using var stream = new NetworkStream(socket, ownsSocket: false);
            await stream.WriteAsync("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"u8.ToArray());
            socket.Shutdown(SocketShutdown.Send);
            var sink = new byte[4096];
            while (await stream.ReadAsync(sink) > 0)
            {
            }
        });
        using var transport = new ReplicaTransport($"http://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}");
        var exchange = await transport.StartAsync(await transport.NextAsync(default), "/x.Y/Z", GrpcHeaders, default);
        await exchange.WriteAsync("hello"u8.ToArray(), endStream: true, default);
        var e = await Assert.ThrowsAsync<IOException>(async () => await exchange.ReadHeadersAsync(default));
        Assert.Contains("answered in HTTP/1.x", e.Message, StringComparison.Ordinal);
        Assert.Contains("HTTP/2", e.Message, StringComparison.Ordinal);
        await exchange.DisposeAsync();
        await serve;
        listener.Stop();
    }

    [Fact]
    public async Task A_server_that_cannot_be_reached_is_an_HttpRequestException_naming_the_address()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        using var transport = new ReplicaTransport($"http://127.0.0.1:{port}");
        var e = await Assert.ThrowsAsync<HttpRequestException>(async () => await transport.StartAsync(await transport.NextAsync(default), "/x.Y/Z", GrpcHeaders, default));
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
    }

    private static byte[] Setting(ushort id, uint value)
    {
        var bytes = new byte[6];
        BinaryPrimitives.WriteUInt16BigEndian(bytes, id);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(2), value);
        return bytes;
    }

    /// <summary>A loopback server that accepts connections and runs a script of frames on each, checking the client's preface.</summary>
    private sealed class ScriptedServer(int initialWindow = 1 << 20, int maxFrame = 16_384) : IAsyncDisposable
    {
        private readonly TcpListener listener = StartListener();

        public string Address => $"http://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";

        public int Connections { get; private set; }

        private static TcpListener StartListener()
        {
            var l = new TcpListener(IPAddress.Loopback, 0);
            l.Start();
            return l;
        }

        /// <summary>
        /// Accepts one connection and runs <paramref name="script"/> on it, then reads until the client
        /// closes (closing with unread bytes would reset the connection under frames the client has yet to read).
        /// </summary>
        public async Task RunAsync(Func<Peer, Task> script)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            using var socket = await listener.AcceptSocketAsync(timeout.Token);
            Connections++;
            await using var peer = new Peer(new NetworkStream(socket, ownsSocket: false));
            var preface = new byte[24];
            await peer.Stream.ReadExactlyAsync(preface, timeout.Token);
            Assert.Equal("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Encoding.ASCII.GetString(preface));
            await peer.WriteAsync(4, 0, 0, [.. Setting(0x4, (uint)initialWindow), .. Setting(0x5, (uint)maxFrame)]);
            await script(peer);
            var sink = new byte[4096];
            while (await peer.Stream.ReadAsync(sink, timeout.Token) > 0)
            {
            }
        }

        public ValueTask DisposeAsync()
        {
            listener.Stop();
            return ValueTask.CompletedTask;
        }
    }

    private sealed class Peer(NetworkStream stream) : IAsyncDisposable
    {
        public NetworkStream Stream { get; } = stream;

        public List<int> DataFrameLengths { get; } = [];

        public async Task WriteAsync(byte type, byte flags, int streamId, byte[] payload)
        {
            var frame = new byte[9 + payload.Length];
            frame[0] = (byte)(payload.Length >> 16);
            frame[1] = (byte)(payload.Length >> 8);
            frame[2] = (byte)payload.Length;
            frame[3] = type;
            frame[4] = flags;
            BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(5), streamId);
            payload.CopyTo(frame, 9);
            await Stream.WriteAsync(frame);
        }

        public async Task<(int Length, byte Type, byte Flags, int StreamId, byte[] Payload)> ReadFrameAsync()
        {
            var header = new byte[9];
            await Stream.ReadExactlyAsync(header);
            int length = (header[0] << 16) | (header[1] << 8) | header[2];
            var payload = new byte[length];
            await Stream.ReadExactlyAsync(payload);
            return (length, header[3], header[4], BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(5)) & 0x7FFF_FFFF, payload);
        }

        /// <summary>
        /// Reads one request: its HEADERS, then its DATA until END_STREAM (skipping SETTINGS, their
        /// acks and window updates), acknowledging the client's SETTINGS; granting window as it reads when asked.
        /// Returns the HEADERS frame and the body.
        /// </summary>
        public async Task<((int Length, byte Type, byte Flags, int StreamId, byte[] Payload) Headers, byte[] Body)> ReadRequestAsync(bool grantWindow = false)
        {
            (int Length, byte Type, byte Flags, int StreamId, byte[] Payload) headers = default;
            var body = new MemoryStream();
            while (true)
            {
                var frame = await ReadFrameAsync();
                switch (frame.Type)
                {
                    case 4 when (frame.Flags & 1) == 0:
                        await WriteAsync(4, 1, 0, []);
                        break;
                    case 1:
                        headers = frame;
                        Assert.True((frame.Flags & 0x4) != 0, "request headers in one frame");
                        if ((frame.Flags & 1) != 0)
                            return (headers, []);
                        break;
                    case 0:
                        DataFrameLengths.Add(frame.Length);
                        body.Write(frame.Payload);
                        if (grantWindow && frame.Length > 0)
                        {
                            await WriteAsync(8, 0, 0, Increment(frame.Length));
                            await WriteAsync(8, 0, frame.StreamId, Increment(frame.Length));
                        }
                        if ((frame.Flags & 1) != 0)
                            return (headers, body.ToArray());
                        break;
                }
            }
        }

        private static byte[] Increment(int n)
        {
            var bytes = new byte[4];
            BinaryPrimitives.WriteInt32BigEndian(bytes, n);
            return bytes;
        }

        /// <summary>Reads frames until one of <paramref name="type"/> with <paramref name="flags"/>; returns its payload.</summary>
        public async Task<byte[]> ExpectAsync(byte type, byte flags)
        {
            while (true)
            {
                var frame = await ReadFrameAsync();
                if (frame.Type == type && frame.Flags == flags)
                    return frame.Payload;
            }
        }

        /// <summary>Reads frames until a WINDOW_UPDATE for <paramref name="streamId"/>; returns its increment.</summary>
        public async Task<int> ExpectWindowUpdateAsync(int streamId)
        {
            while (true)
            {
                var frame = await ReadFrameAsync();
                if (frame.Type == 8 && frame.StreamId == streamId)
                    return BinaryPrimitives.ReadInt32BigEndian(frame.Payload) & 0x7FFF_FFFF;
            }
        }

        /// <summary>Ends the server's side (FIN): the client reads the end of the connection.</summary>
        public void Close() => Stream.Socket.Shutdown(SocketShutdown.Send);

        public async ValueTask DisposeAsync() => await Stream.DisposeAsync();
    }
}
