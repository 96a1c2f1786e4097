using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.IO.Pipelines;
using System.Text;
using Grpc.Core;

namespace InterpMesh.Gateway.Routing;

/// <summary>
/// One gRPC request message as it crosses the gateway, unparsed: the payload bytes of a
/// length-prefixed message, in a buffer rented from the shared pool (returned by <see cref="Dispose"/>).
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

    /// <summary>The payload.</summary>
    public ReadOnlySpan<byte> Span => buffer.AsSpan(0, buffer is null ? 0 : Length);

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
        return Prefix(prefix);
    }

    /// <summary>A message prefix read: whether the message is compressed, and its length.</summary>
    public static (bool Compressed, uint Length) Prefix(ReadOnlySpan<byte> prefix) => (prefix[0] != 0, BinaryPrimitives.ReadUInt32BigEndian(prefix[1..PrefixBytes]));

    /// <summary>Writes <paramref name="frame"/> as an uncompressed length-prefixed message into <paramref name="destination"/>; returns the bytes written.</summary>
    public static int Encode(Frame frame, Span<byte> destination)
    {
        destination[0] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(destination[1..], (uint)frame.Length);
        frame.Span.CopyTo(destination[PrefixBytes..]);
        return PrefixBytes + frame.Length;
    }

    /// <summary>Writes <paramref name="frame"/> to the replica as an uncompressed length-prefixed message, in one write (ending the request when <paramref name="last"/>).</summary>
    public static async Task WriteAsync(InterpMesh.Routing.Http2.Http2Exchange upstream, Frame frame, bool last, CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(PrefixBytes + frame.Length);
        try
        {
            await upstream.WriteAsync(buffer.AsMemory(0, Encode(frame, buffer)), last, ct);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The first value of the header <paramref name="name"/> (lower case, as HTTP/2 sends names), or null.</summary>
    public static string? Find(IReadOnlyList<(string Name, string Value)> headers, string name)
    {
        foreach (var (key, value) in headers)
        {
            if (key == name)
                return value;
        }
        return null;
    }

    /// <summary>
    /// A <c>grpc-timeout</c> value for <paramref name="timeout"/>: whole milliseconds (at least one),
    /// or seconds, minutes or hours when milliseconds need more than the 8 digits the spec allows.
    /// </summary>
    public static string FormatTimeout(TimeSpan timeout)
    {
        long ms = Math.Max(1, (long)Math.Ceiling(timeout.TotalMilliseconds));
        if (ms < 100_000_000)
            return ms.ToString(CultureInfo.InvariantCulture) + "m";
        long seconds = (long)Math.Ceiling(timeout.TotalSeconds);
        if (seconds < 100_000_000)
            return seconds.ToString(CultureInfo.InvariantCulture) + "S";
        return Math.Min(99_999_999, (long)Math.Ceiling(timeout.TotalHours)).ToString(CultureInfo.InvariantCulture) + "H";
    }

    /// <summary>
    /// The status and metadata of a gRPC response from its trailers (or, trailers-only, its headers):
    /// <c>grpc-status</c>, <c>grpc-message</c> percent-decoded, the other entries as metadata
    /// (<c>-bin</c> ones base64-decoded, as gRPC sends them).
    /// </summary>
    public static (Status Status, Metadata Trailers) StatusOf(IReadOnlyList<(string Name, string Value)> headers)
    {
        var metadata = new Metadata();
        var code = StatusCode.Unknown;
        string detail = "";
        foreach (var (key, value) in headers)
        {
            if (key.Equals("grpc-status", StringComparison.OrdinalIgnoreCase))
            {
                code = int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int c) ? (StatusCode)c : StatusCode.Unknown;
            }
            else if (key.Equals("grpc-message", StringComparison.OrdinalIgnoreCase))
            {
                detail = DecodeMessage(value);
            }
            else if (key.EndsWith(Metadata.BinaryHeaderSuffix, StringComparison.OrdinalIgnoreCase))
            {
                if (TryBase64(value) is { } bytes)
                    metadata.Add(key.ToLowerInvariant(), bytes);
            }
            else if (!key.StartsWith(':'))
            {
                metadata.Add(key.ToLowerInvariant(), value);
            }
        }
        return (new Status(code, detail), metadata);
    }

    /// <summary>The status of a response that is not HTTP 200, as the gRPC spec maps HTTP statuses.</summary>
    public static Status StatusOfHttp(int httpStatus) => new(httpStatus switch
    {
        400 => StatusCode.Internal,
        401 => StatusCode.Unauthenticated,
        403 => StatusCode.PermissionDenied,
        404 => StatusCode.Unimplemented,
        429 or 502 or 503 or 504 => StatusCode.Unavailable,
        _ => StatusCode.Unknown,
    }, $"the model service answered HTTP {httpStatus}, not a gRPC response");

    private static byte[]? TryBase64(string value)
    {
        string padded = value.Trim().PadRight((value.Trim().Length + 3) / 4 * 4, '=');
        var bytes = new byte[padded.Length];
        return Convert.TryFromBase64String(padded, bytes, out int written) ? bytes[..written] : null;
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

    /// <summary>A <c>grpc-message</c> value read: percent-encoded bytes decoded, the whole as UTF-8.</summary>
    public static string DecodeMessage(string value)
    {
        if (!value.Contains('%', StringComparison.Ordinal))
            return value;
        var bytes = new List<byte>(value.Length);
        for (int i = 0; i < value.Length; i++)
        {
            if (value[i] == '%' && i + 2 < value.Length
                && byte.TryParse(value.AsSpan(i + 1, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out byte b))
            {
                bytes.Add(b);
                i += 2;
            }
            else
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(value[i].ToString()));
            }
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }

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
