using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.IO.Pipelines;
using System.Text;
using Grpc.Core;

namespace InterpMesh.Gateway.Routing;

/// <summary>
/// One gRPC message as it crosses the wire, unparsed: the payload bytes of a length-prefixed
/// message, in a buffer rented from the shared pool (returned by <see cref="Dispose"/>).
/// </summary>
public sealed class Frame : IDisposable
{
    private byte[]? buffer;

    private Frame(byte[]? buffer, int length)
    {
        this.buffer = buffer;
        Length = length;
    }

    public int Length { get; }

    /// <summary>
    /// Where the current call's response messages go as they are read (set per forwarded call; it
    /// flows with the call's async context into the channel's read): each message is written
    /// straight into the client's response, without a copy of its own (<see cref="Marshaller"/>).
    /// </summary>
    internal static readonly AsyncLocal<ResponseSink?> Sink = new();

    /// <summary>The payload; empty for a frame already written to the client (<see cref="Sink"/>).</summary>
    public ReadOnlySpan<byte> Span => buffer.AsSpan(0, buffer is null ? 0 : Length);

    public ReadOnlyMemory<byte> Memory => buffer.AsMemory(0, buffer is null ? 0 : Length);

    /// <summary>Whether the payload was written to the client's response as it was read, rather than kept here.</summary>
    public bool Written => buffer is null;

    /// <summary>A frame that records a message of <paramref name="length"/> bytes written elsewhere.</summary>
    internal static Frame WrittenElsewhere(int length) => new(null, length);

    /// <summary>A frame holding a copy of <paramref name="payload"/>.</summary>
    public static Frame Copy(ReadOnlySequence<byte> payload)
    {
        int length = checked((int)payload.Length);
        var frame = new Frame(ArrayPool<byte>.Shared.Rent(Math.Max(length, 1)), length);
        payload.CopyTo(frame.buffer);
        return frame;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref buffer, null) is { } b)
            ArrayPool<byte>.Shared.Return(b);
    }

    /// <summary>
    /// Passes message payloads through a gRPC channel as they are: no protobuf parsing. A received
    /// message is copied once, out of the channel's receive buffer: into the client's response when
    /// the call has a <see cref="Sink"/>, otherwise into a pooled buffer.
    /// </summary>
    public static readonly Marshaller<Frame> Marshaller = new(
        (frame, context) =>
        {
            context.SetPayloadLength(frame.Length);
            var writer = context.GetBufferWriter();
            writer.Write(frame.Span);
            context.Complete();
        },
        context => Sink.Value is { } sink ? sink.Write(context.PayloadAsReadOnlySequence()) : Copy(context.PayloadAsReadOnlySequence()));
}

/// <summary>
/// The client's response body as the destination of a forwarded call's messages: each is written
/// whole, length prefix first, when the channel has read all of it (so a replica failing
/// mid-message leaves nothing of that message in the response). Before the first, <see cref="BeforeFirst"/>
/// runs (the response headers are set then: nothing may be written before them).
/// </summary>
internal sealed class ResponseSink(PipeWriter body, Action beforeFirst)
{
    /// <summary>Messages written so far.</summary>
    public int Messages { get; private set; }

    private Action BeforeFirst { get; } = beforeFirst;

    public Frame Write(ReadOnlySequence<byte> payload)
    {
        if (Messages++ == 0)
            BeforeFirst();
        int length = checked((int)payload.Length);
        var prefix = body.GetSpan(GrpcWire.PrefixBytes);
        prefix[0] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(prefix[1..], (uint)length);
        body.Advance(GrpcWire.PrefixBytes);
        foreach (var segment in payload)
            body.Write(segment.Span);
        return Frame.WrittenElsewhere(length);
    }
}

/// <summary>The parts of the gRPC-over-HTTP/2 wire format the forwarder reads and writes itself.</summary>
public static class GrpcWire
{
    /// <summary>A message's prefix: a compressed flag and a big-endian 32-bit length.</summary>
    public const int PrefixBytes = 5;

    /// <summary>
    /// Reads the next length-prefixed message from <paramref name="body"/>: null at a clean end of
    /// the body, an <see cref="RpcException"/> for a body that is not a sequence of messages the
    /// forwarder can pass on (cut short, compressed, or over <paramref name="maxBytes"/>).
    /// </summary>
    public static async ValueTask<Frame?> ReadAsync(PipeReader body, int maxBytes, CancellationToken ct)
    {
        while (true)
        {
            var result = await body.ReadAsync(ct);
            var buffer = result.Buffer;
            if (buffer.Length >= PrefixBytes)
            {
                var (compressed, length) = Prefix(buffer);
                if (compressed)
                {
                    body.AdvanceTo(buffer.Start);
                    throw new RpcException(new Status(StatusCode.Unimplemented,
                        "the gateway forwards uncompressed messages only; send the request without grpc-encoding compression"));
                }
                if (length > (uint)maxBytes)
                {
                    body.AdvanceTo(buffer.Start);
                    throw new RpcException(new Status(StatusCode.ResourceExhausted,
                        $"the request message is {length} bytes; this gateway takes at most {maxBytes} (Gateway:MaxRequestBytes)"), Contracts.RetryPushback.Never());
                }
                if (buffer.Length >= PrefixBytes + length)
                {
                    var frame = Frame.Copy(buffer.Slice(PrefixBytes, length));
                    body.AdvanceTo(buffer.GetPosition(PrefixBytes + length));
                    return frame;
                }
            }
            if (result.IsCompleted)
            {
                body.AdvanceTo(buffer.End);
                if (buffer.Length == 0)
                    return null;
                throw new RpcException(new Status(StatusCode.Internal,
                    $"the request body ended inside a message ({buffer.Length} bytes of a message left over)"));
            }
            if (result.IsCanceled)
                throw new OperationCanceledException(ct);
            body.AdvanceTo(buffer.Start, buffer.End);
        }
    }

    private static (bool Compressed, uint Length) Prefix(ReadOnlySequence<byte> buffer)
    {
        Span<byte> prefix = stackalloc byte[PrefixBytes];
        buffer.Slice(0, PrefixBytes).CopyTo(prefix);
        return (prefix[0] != 0, BinaryPrimitives.ReadUInt32BigEndian(prefix[1..]));
    }

    /// <summary>Writes <paramref name="frame"/> as an uncompressed length-prefixed message and flushes it.</summary>
    public static ValueTask<FlushResult> WriteAsync(PipeWriter body, Frame frame, CancellationToken ct)
    {
        var prefix = body.GetSpan(PrefixBytes);
        prefix[0] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(prefix[1..], (uint)frame.Length);
        body.Advance(PrefixBytes);
        return body.WriteAsync(frame.Memory, ct);
    }

    /// <summary>
    /// The deadline a <c>grpc-timeout</c> header asks for (digits and a unit: H, M, S, m, u, n), or
    /// null when there is none. A value the gRPC spec does not allow is refused.
    /// </summary>
    public static TimeSpan? ParseTimeout(string? value)
    {
        if (string.IsNullOrEmpty(value))
            return null;
        if (value.Length is < 2 or > 9
            || !long.TryParse(value.AsSpan(0, value.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out long amount))
        {
            throw BadTimeout(value);
        }
        return value[^1] switch
        {
            'H' => TimeSpan.FromHours(amount),
            'M' => TimeSpan.FromMinutes(amount),
            'S' => TimeSpan.FromSeconds(amount),
            'm' => TimeSpan.FromMilliseconds(amount),
            'u' => TimeSpan.FromMicroseconds(amount),
            'n' => TimeSpan.FromTicks(amount / 100),
            _ => throw BadTimeout(value),
        };
    }

    private static RpcException BadTimeout(string value) =>
        new(new Status(StatusCode.InvalidArgument, $"grpc-timeout '{(value.Length > 16 ? value[..16] + "…" : value)}' is not a gRPC timeout (1 to 8 digits and a unit: H, M, S, m, u or n)"));

    /// <summary>A <c>grpc-message</c> value: UTF-8, with bytes outside printable ASCII and '%' percent-encoded (gRPC over HTTP/2).</summary>
    public static string EncodeMessage(string message)
    {
        var text = new StringBuilder(message.Length);
        foreach (byte b in Encoding.UTF8.GetBytes(message))
        {
            if (b is >= 0x20 and <= 0x7E && b != (byte)'%')
                text.Append((char)b);
            else
                text.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
        }
        return text.ToString();
    }
}
