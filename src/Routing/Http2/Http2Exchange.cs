namespace InterpMesh.Routing.Http2;

/// <summary>
/// One call over an <see cref="Http2Connection"/> of its own: the request's headers and body written
/// (<see cref="WriteAsync"/>, in as few socket writes as the flow-control windows allow: the headers
/// leave with the first body bytes), the response's headers, body and trailers read
/// (<see cref="ReadHeadersAsync"/>, <see cref="Body"/>, <see cref="Trailers"/>). The request may be
/// written by one task while another reads the response. Disposing it gives the connection back to
/// its pool when the call ended cleanly both ways, and closes it otherwise (the replica then sees
/// the call aborted, as with a reset).
/// </summary>
public sealed class Http2Exchange : IAsyncDisposable
{
    private readonly Http2Connection connection;
    private readonly Http2ConnectionPool pool;
    private readonly int id;
    private readonly List<(string Name, string Value)> headers = [];
    private List<(string Name, string Value)>? trailers;
    private byte[] pending;
    private int pendingLength;
    private volatile bool requestEnded;
    private bool responseEnded;
    private int dataRemaining;
    private int paddingRemaining;
    private bool dataEndsStream;
    private int streamUnacked;
    private int disposed;

    private Http2Exchange(Http2Connection connection, Http2ConnectionPool pool, int id)
    {
        this.connection = connection;
        this.pool = pool;
        this.id = id;
        pending = new byte[4096];
        Body = new BodyStream(this);
        SendWindow = connection.PeerInitialWindow;
    }

    /// <summary>The stream's send window; changed under the connection's window lock only.</summary>
    internal long SendWindow;

    /// <summary>The response's <c>:status</c> (0 before <see cref="ReadHeadersAsync"/>).</summary>
    public int StatusCode { get; private set; }

    /// <summary>The response's headers (pseudo-headers left out), in order.</summary>
    public IReadOnlyList<(string Name, string Value)> Headers => headers;

    /// <summary>The response's trailers, once the body was read to its end; null when it ended without any.</summary>
    public IReadOnlyList<(string Name, string Value)>? Trailers => trailers;

    /// <summary>Whether the response ended (its headers carried END_STREAM, or its body was read to the end).</summary>
    public bool ResponseEnded => responseEnded;

    /// <summary>The response body, read from the connection (each read at most what one DATA frame holds).</summary>
    public Stream Body { get; }

    /// <summary>Starts a POST of <paramref name="path"/> on <paramref name="connection"/>: its HEADERS wait to leave with the first body bytes.</summary>
    internal static Http2Exchange Start(Http2Connection connection, Http2ConnectionPool pool, int streamId, string path, IReadOnlyList<(string Name, string Value)> requestHeaders)
    {
        var exchange = new Http2Exchange(connection, pool, streamId);
        connection.CurrentStream = exchange;
        int size = 3 + HpackEncoder.LiteralLength(":path", path) + HpackEncoder.LiteralLength(":authority", connection.Authority);
        foreach (var (name, value) in requestHeaders)
            size += HpackEncoder.LiteralLength(name, value);
        if (size > 16_384)
            throw new ArgumentException($"the request's headers take {size} bytes encoded; at most 16384 fit one HEADERS frame", nameof(requestHeaders));
        var span = exchange.Reserve(FrameHeader.Size + size);
        int n = FrameHeader.Size;
        n += HpackEncoder.WriteIndexed(span[n..], 3); // :method POST
        n += HpackEncoder.WriteIndexed(span[n..], connection.Scheme == "https" ? 7 : 6);
        n += HpackEncoder.WriteLiteral(span[n..], ":path", path);
        n += HpackEncoder.WriteLiteral(span[n..], ":authority", connection.Authority);
        foreach (var (name, value) in requestHeaders)
            n += HpackEncoder.WriteLiteral(span[n..], name, value);
        FrameHeader.Write(span, n - FrameHeader.Size, FrameType.Headers, FrameFlags.EndHeaders, streamId);
        exchange.pendingLength += n;
        return exchange;
    }

    /// <summary>
    /// Writes <paramref name="data"/> as DATA frames (as the replica's windows allow; waiting for
    /// them to open), ending the request when <paramref name="endStream"/>, and sends what is pending.
    /// </summary>
    public async ValueTask WriteAsync(ReadOnlyMemory<byte> data, bool endStream, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        if (requestEnded)
            throw new InvalidOperationException("the request already ended");
        int offset = 0;
        while (offset < data.Length)
        {
            int n = connection.TakeSendWindow(this, data.Length - offset, out var opened);
            if (n == 0)
            {
                await FlushAsync(ct);
                await opened.WaitAsync(ct);
                continue;
            }
            bool last = offset + n == data.Length;
            var span = Reserve(FrameHeader.Size + n);
            FrameHeader.Write(span, n, FrameType.Data, last && endStream ? FrameFlags.EndStream : (byte)0, id);
            data.Span.Slice(offset, n).CopyTo(span[FrameHeader.Size..]);
            pendingLength += FrameHeader.Size + n;
            offset += n;
        }
        if (endStream && data.Length == 0)
        {
            FrameHeader.Write(Reserve(FrameHeader.Size), 0, FrameType.Data, FrameFlags.EndStream, id);
            pendingLength += FrameHeader.Size;
        }
        await FlushAsync(ct);
        // Only once sent: a connection goes back to its pool with nothing of this call left to write.
        requestEnded = endStream;
    }

    /// <summary>Sends what is pending (the headers, if no body was written yet).</summary>
    public async ValueTask FlushAsync(CancellationToken ct)
    {
        if (pendingLength == 0)
            return;
        int length = pendingLength;
        pendingLength = 0;
        await connection.SendAsync(pending.AsMemory(0, length), ct);
    }

    private Span<byte> Reserve(int bytes)
    {
        if (pending.Length - pendingLength < bytes)
        {
            // Not pooled: a writer still running when the call is disposed may hold it.
            var larger = new byte[Math.Max(pendingLength + bytes, pending.Length * 2)];
            pending.AsSpan(0, pendingLength).CopyTo(larger);
            pending = larger;
        }
        return pending.AsSpan(pendingLength, bytes);
    }

    /// <summary>
    /// Reads the response's headers (skipping informational ones). A response whose headers end it
    /// (gRPC's trailers-only) has <see cref="ResponseEnded"/> set. A reset stream, a GOAWAY that did
    /// not take this call or a broken connection is an <see cref="IOException"/>.
    /// </summary>
    public async ValueTask ReadHeadersAsync(CancellationToken ct)
    {
        while (true)
        {
            var frame = await NextFrameAsync(int.MaxValue, ct);
            if (frame.Type == FrameType.Data)
                throw Http2Connection.Protocol("DATA before the response's HEADERS");
            var block = new List<(string Name, string Value)>();
            await ReadHeaderBlockAsync(frame, block, ct);
            int status = 0;
            foreach (var (name, value) in block)
            {
                if (name == ":status")
                    status = int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int s) ? s : 0;
                else if (!name.StartsWith(':'))
                    headers.Add((name, value));
            }
            if (status is < 100 or > 999)
                throw Http2Connection.Protocol("the response's HEADERS have no valid :status");
            if (status < 200 && !frame.Has(FrameFlags.EndStream))
            {
                headers.Clear();
                continue;
            }
            StatusCode = status;
            responseEnded = frame.Has(FrameFlags.EndStream);
            return;
        }
    }

    /// <summary>Reads body bytes into <paramref name="destination"/>: 0 at the end of the body, whose trailers are then in <see cref="Trailers"/>.</summary>
    private async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken ct)
    {
        while (true)
        {
            if (dataRemaining > 0)
            {
                if (destination.Length == 0)
                    return 0;
                int want = Math.Min(destination.Length, dataRemaining);
                int n;
                if (connection.Buffered > 0)
                {
                    n = Math.Min(want, connection.Buffered);
                    connection.BufferedSpan[..n].CopyTo(destination.Span);
                    connection.Consume(n);
                }
                else if (want >= 4096)
                {
                    // The bulk of a message: from the socket straight into the caller's memory.
                    n = await connection.ReadDirectAsync(destination[..want], ct);
                }
                else
                {
                    await connection.FillAsync(1, dataRemaining + paddingRemaining + FrameHeader.Size, ct);
                    continue;
                }
                dataRemaining -= n;
                await ConsumedAsync(n, ct);
                if (dataRemaining == 0)
                    await EndDataFrameAsync(ct);
                return n;
            }
            if (responseEnded || destination.Length == 0)
                return 0;
            // Before a large read only the next frame's header is read, so its payload can go straight to the destination.
            var frame = await NextFrameAsync(destination.Length >= 65_536 ? FrameHeader.Size : int.MaxValue, ct);
            if (frame.Type == FrameType.Headers)
            {
                if (!frame.Has(FrameFlags.EndStream))
                    throw Http2Connection.Protocol("HEADERS in the middle of the response body without END_STREAM");
                trailers = [];
                await ReadHeaderBlockAsync(frame, trailers, ct);
                responseEnded = true;
                return 0;
            }
            if (frame.Length > Http2Connection.MaxFrameSize)
                throw Http2Connection.Protocol($"a DATA frame of {frame.Length} bytes exceeds the {Http2Connection.MaxFrameSize} advertised");
            dataEndsStream = frame.Has(FrameFlags.EndStream);
            dataRemaining = frame.Length;
            paddingRemaining = 0;
            if (frame.Has(FrameFlags.Padded))
            {
                if (frame.Length < 1)
                    throw Http2Connection.Protocol("a padded DATA frame without its pad length");
                await connection.FillAsync(1, FrameHeader.Size, ct);
                paddingRemaining = connection.BufferedSpan[0];
                connection.Consume(1);
                dataRemaining -= 1 + paddingRemaining;
                if (dataRemaining < 0)
                    throw Http2Connection.Protocol("a DATA frame's padding is longer than the frame");
                await ConsumedAsync(1, ct);
            }
            if (dataRemaining == 0)
                await EndDataFrameAsync(ct);
        }
    }

    /// <summary>After a DATA frame's data: its padding skipped, and the response ended if the frame ended the stream.</summary>
    private async ValueTask EndDataFrameAsync(CancellationToken ct)
    {
        if (paddingRemaining > 0)
        {
            await connection.FillAsync(paddingRemaining, paddingRemaining, ct);
            connection.Consume(paddingRemaining);
            await ConsumedAsync(paddingRemaining, ct);
            paddingRemaining = 0;
        }
        if (dataEndsStream)
            responseEnded = true;
    }

    /// <summary>Counts bytes taken from the stream's window, and gives window back once half of the stream's (or enough of the connection's) was used.</summary>
    private async ValueTask ConsumedAsync(int bytes, CancellationToken ct)
    {
        int connectionAck = connection.ConnectionBytesConsumed(bytes);
        streamUnacked += bytes;
        int streamAck = 0;
        if (!dataEndsStream && streamUnacked >= Http2Connection.StreamWindow / 2)
        {
            streamAck = streamUnacked;
            streamUnacked = 0;
        }
        if (connectionAck == 0 && streamAck == 0)
            return;
        if (connectionAck > 0 && streamAck > 0)
            await connection.SendAsync((byte[])[.. Http2Connection.WindowUpdate(id, streamAck), .. Http2Connection.WindowUpdate(0, connectionAck)], ct);
        else
            await connection.SendAsync(streamAck > 0 ? Http2Connection.WindowUpdate(id, streamAck) : Http2Connection.WindowUpdate(0, connectionAck), ct);
    }

    /// <summary>
    /// The header of the next HEADERS or DATA frame of this stream, its payload not yet read; every
    /// other frame is handled on the way (settings, pings, window updates; a reset or a GOAWAY that
    /// leaves this call out is an <see cref="IOException"/>).
    /// </summary>
    private async ValueTask<FrameHeader> NextFrameAsync(int most, CancellationToken ct)
    {
        while (true)
        {
            await connection.FillAsync(FrameHeader.Size, most, ct);
            var frame = connection.TakeFrameHeader();
            if (frame.StreamId == id)
            {
                switch (frame.Type)
                {
                    case FrameType.Data or FrameType.Headers:
                        return frame;
                    case FrameType.RstStream:
                        await connection.FillAsync(frame.Length, frame.Length, ct);
                        uint code = frame.Length == 4 ? System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(connection.BufferedSpan) : ErrorCodes.ProtocolError;
                        connection.Consume(frame.Length);
                        connection.Spent = true;
                        throw new IOException($"the model service reset the stream ({ErrorCodes.Name(code)})");
                    case FrameType.WindowUpdate:
                        await connection.FillAsync(frame.Length, frame.Length, ct);
                        int increment = Http2Connection.WindowIncrement(frame, connection.BufferedSpan);
                        connection.Consume(frame.Length);
                        connection.OpenSendWindow(this, increment);
                        continue;
                    case FrameType.Continuation:
                        throw Http2Connection.Protocol("CONTINUATION without HEADERS before it");
                }
            }
            int lastStream = await connection.HandleConnectionFrameAsync(frame, ct);
            if (lastStream >= 0 && lastStream < id)
                throw new IOException("the model service is closing the connection (GOAWAY) and did not take this call");
        }
    }

    /// <summary>Reads a HEADERS frame's block (with its CONTINUATION frames) and decodes it into <paramref name="fields"/>.</summary>
    private async ValueTask ReadHeaderBlockAsync(FrameHeader frame, List<(string Name, string Value)> fields, CancellationToken ct)
    {
        if (frame.Length > Http2Connection.MaxFrameSize)
            throw Http2Connection.Protocol($"a HEADERS frame of {frame.Length} bytes exceeds the {Http2Connection.MaxFrameSize} advertised");
        await connection.FillAsync(frame.Length, frame.Length, ct);
        var payload = connection.BufferedSpan[..frame.Length];
        int skip = 0, padding = 0;
        if (frame.Has(FrameFlags.Padded))
        {
            padding = payload.Length > 0 ? payload[0] : throw Http2Connection.Protocol("a padded HEADERS frame without its pad length");
            skip = 1;
        }
        if (frame.Has(FrameFlags.Priority))
            skip += 5;
        if (skip + padding > payload.Length)
            throw Http2Connection.Protocol("a HEADERS frame's padding is longer than the frame");
        var fragment = payload[skip..^padding];
        if (frame.Has(FrameFlags.EndHeaders))
        {
            Decode(fragment, fields);
            connection.Consume(frame.Length);
            return;
        }
        var block = new List<byte>(fragment.Length * 2);
        block.AddRange(fragment);
        connection.Consume(frame.Length);
        while (true)
        {
            await connection.FillAsync(FrameHeader.Size, FrameHeader.Size, ct);
            var next = connection.TakeFrameHeader();
            if (next.Type != FrameType.Continuation || next.StreamId != id)
                throw Http2Connection.Protocol("a header block not continued by CONTINUATION frames");
            if (block.Count + next.Length > Http2Connection.MaxHeaderBlock)
                throw Http2Connection.Protocol($"a header block over {Http2Connection.MaxHeaderBlock} bytes");
            await connection.FillAsync(next.Length, next.Length, ct);
            block.AddRange(connection.BufferedSpan[..next.Length]);
            connection.Consume(next.Length);
            if (next.Has(FrameFlags.EndHeaders))
                break;
        }
        Decode(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(block), fields);
    }

    private void Decode(ReadOnlySpan<byte> block, List<(string Name, string Value)> fields)
    {
        try
        {
            connection.Decoder.Decode(block, fields);
        }
        catch (HpackException e)
        {
            connection.Spent = true;
            throw new IOException($"the model service sent headers that do not decode: {e.Message}", e);
        }
    }

    /// <summary>Gives the connection back to its pool if the call ended cleanly both ways; otherwise closes it.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0)
            return;
        connection.CurrentStream = null;
        if (requestEnded && responseEnded && !connection.Spent)
            pool.Return(connection);
        else
            await connection.DisposeAsync();
    }

    /// <summary>The response body as a read-only <see cref="Stream"/>.</summary>
    private sealed class BodyStream(Http2Exchange exchange) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => exchange.ReadAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            exchange.ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override int Read(byte[] buffer, int offset, int count) => exchange.ReadAsync(buffer.AsMemory(offset, count), default).AsTask().GetAwaiter().GetResult();

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
