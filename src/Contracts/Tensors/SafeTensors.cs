using System.Buffers.Binary;
using System.Text.Json;

namespace InterpMesh.Contracts.Tensors;

/// <summary>
/// The element types the safetensors format names, numbered as PyTorch's (and TorchSharp's)
/// <c>ScalarType</c> numbers them, so a torch layer converts by a cast: the one dtype table.
/// </summary>
public enum SafeTensorsDType
{
    /// <summary>8-bit unsigned integer (<c>U8</c>).</summary>
    U8 = 0,
    /// <summary>8-bit signed integer (<c>I8</c>).</summary>
    I8 = 1,
    /// <summary>16-bit signed integer (<c>I16</c>).</summary>
    I16 = 2,
    /// <summary>32-bit signed integer (<c>I32</c>).</summary>
    I32 = 3,
    /// <summary>64-bit signed integer (<c>I64</c>).</summary>
    I64 = 4,
    /// <summary>IEEE half (<c>F16</c>).</summary>
    F16 = 5,
    /// <summary>IEEE single (<c>F32</c>).</summary>
    F32 = 6,
    /// <summary>IEEE double (<c>F64</c>).</summary>
    F64 = 7,
    /// <summary>One byte per boolean (<c>BOOL</c>).</summary>
    BOOL = 11,
    /// <summary>bfloat16 (<c>BF16</c>).</summary>
    BF16 = 15,
}

/// <summary>One tensor's entry in a safetensors header: offsets are relative to the start of the data.</summary>
public sealed record SafeTensorEntry(string Name, SafeTensorsDType DType, long[] Shape, long Begin, long End)
{
    /// <summary>Number of elements (the product of the shape).</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>A safetensors file (or buffer) that cannot be used; the message names it and says what is wrong.</summary>
public sealed class SafeTensorsFormatException : IOException
{
    public SafeTensorsFormatException(string source, string problem, Exception? inner = null)
        : base($"{source}: {problem}", inner)
    {
        FileName = source;
        Problem = problem;
    }

    /// <summary>The file (or artifact file) that was being read.</summary>
    public string FileName { get; }

    /// <summary>What is wrong with it, in words a user can act on.</summary>
    public string Problem { get; }
}

/// <summary>The parsed header of a safetensors file: its entries, its metadata and where the data starts.</summary>
public sealed class SafeTensorsHeader
{
    internal SafeTensorsHeader(long dataStart, long dataLength, Dictionary<string, SafeTensorEntry> entries, Dictionary<string, string> metadata)
    {
        DataStart = dataStart;
        DataLength = dataLength;
        Entries = entries;
        Metadata = metadata;
    }

    /// <summary>Offset of the first data byte from the start of the file (8 + header length).</summary>
    public long DataStart { get; }

    /// <summary>Bytes after the header.</summary>
    public long DataLength { get; }

    /// <summary>The tensors by name.</summary>
    public IReadOnlyDictionary<string, SafeTensorEntry> Entries { get; }

    /// <summary>The <c>__metadata__</c> strings (non-string values as their JSON text).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
}

/// <summary>A tensor to write: its name, dtype, shape and a callback that writes exactly its bytes.</summary>
/// <param name="Name">Tensor name (the header key).</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions.</param>
/// <param name="WriteData">Writes the little-endian, row-major element bytes to the stream it is given.</param>
public sealed record SafeTensorSource(string Name, SafeTensorsDType DType, IReadOnlyList<long> Shape, Action<Stream> WriteData);

/// <summary>
/// The one safetensors codec (8-byte little-endian header length, a UTF-8 JSON header, raw
/// little-endian data), without any tensor library: the runtime reads model weights through it
/// (memory-mapped, into torch tensors) and the plugin SDK reads and writes artifacts through it.
/// The header is validated before any data is touched, so a truncated or lying file fails with a
/// message naming the file instead of a crash or a huge allocation.
/// </summary>
public static class SafeTensorsFormat
{
    /// <summary>Headers larger than this are refused (real headers are a few MB at most).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    /// <summary>Name of the metadata entry of a header.</summary>
    public const string MetadataKey = "__metadata__";

    /// <summary>Bytes per element.</summary>
    public static int ElementSize(SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.F64 or SafeTensorsDType.I64 => 8,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.I16 => 2,
        SafeTensorsDType.I8 or SafeTensorsDType.U8 or SafeTensorsDType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>The dtype a header names (<c>F32</c>, <c>BF16</c>, ...), or null for one this codec does not read.</summary>
    public static SafeTensorsDType? ParseDType(string name) => name switch
    {
        "F64" => SafeTensorsDType.F64,
        "F32" => SafeTensorsDType.F32,
        "F16" => SafeTensorsDType.F16,
        "BF16" => SafeTensorsDType.BF16,
        "I64" => SafeTensorsDType.I64,
        "I32" => SafeTensorsDType.I32,
        "I16" => SafeTensorsDType.I16,
        "I8" => SafeTensorsDType.I8,
        "U8" => SafeTensorsDType.U8,
        "BOOL" => SafeTensorsDType.BOOL,
        _ => null,
    };

    /// <summary>
    /// The dtype whose number is <paramref name="scalarTypeCode"/> in PyTorch's <c>ScalarType</c>
    /// numbering (what a torch layer passes as <c>(int)tensor.dtype</c>), or null when safetensors has none.
    /// </summary>
    public static SafeTensorsDType? FromScalarTypeCode(int scalarTypeCode) =>
        Enum.IsDefined((SafeTensorsDType)scalarTypeCode) ? (SafeTensorsDType)scalarTypeCode : null;

    private const string Supported = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

    /// <summary>
    /// Reads and validates the header at the start of <paramref name="stream"/> (left positioned at
    /// the first data byte). <paramref name="source"/> names the file in errors.
    /// </summary>
    /// <exception cref="SafeTensorsFormatException">The header is missing, truncated, not JSON or describes data that is not there.</exception>
    public static SafeTensorsHeader ReadHeader(Stream stream, string source)
    {
        ArgumentNullException.ThrowIfNull(stream);
        long fileLength = stream.Length - stream.Position;
        if (fileLength < 8)
            throw new SafeTensorsFormatException(source, $"not a safetensors file: {fileLength} bytes is shorter than the 8-byte header length");
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength < 2 || headerLength > (ulong)MaxHeaderBytes)
            throw new SafeTensorsFormatException(source, $"not a safetensors file: the header length field says {headerLength} bytes (expected 2..{MaxHeaderBytes})");
        if ((long)headerLength > fileLength - 8)
            throw new SafeTensorsFormatException(source, $"truncated: the header length field says {headerLength} bytes but only {fileLength - 8} follow");
        var header = new byte[headerLength];
        stream.ReadExactly(header);
        return ParseHeader(header, 8 + (long)headerLength, fileLength - 8 - (long)headerLength, source);
    }

    private static SafeTensorsHeader ParseHeader(byte[] header, long dataStart, long dataLength, string source)
    {
        // JsonDocument checks UTF-8 only when a string is read, and then throws
        // InvalidOperationException from deep inside; check it here and say so.
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new SafeTensorsFormatException(source, "the safetensors header is not valid UTF-8 (it must be a UTF-8 JSON object); the file is corrupt");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException(source, $"the safetensors header is not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new SafeTensorsFormatException(source, "the safetensors header must be a JSON object of tensor entries");
            var entries = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == MetadataKey)
                {
                    if (prop.Value.ValueKind == JsonValueKind.Object)
                    {
                        foreach (var m in prop.Value.EnumerateObject())
                            metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    }
                    continue;
                }
                entries[prop.Name] = ParseEntry(source, prop.Name, prop.Value, dataLength);
            }
            return new SafeTensorsHeader(dataStart, dataLength, entries, metadata);
        }
    }

    private static SafeTensorEntry ParseEntry(string source, string name, JsonElement e, long dataLength)
    {
        SafeTensorsFormatException Bad(string problem) => new(source, $"tensor '{Shorten(name)}': {problem}");
        if (e.ValueKind != JsonValueKind.Object)
            throw Bad("entry must be an object with dtype, shape and data_offsets");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Bad("missing dtype");
        string dtypeName = dt.GetString()!;
        var dtype = ParseDType(dtypeName) ?? throw Bad($"unsupported dtype '{Shorten(dtypeName)}' (supported: {Supported})");
        int elementSize = ElementSize(dtype);
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw Bad("missing shape");
        var shape = new long[sh.GetArrayLength()];
        long count = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Bad($"shape entry {Shorten(d.GetRawText())} is not a non-negative integer");
            shape[i++] = dim;
            if (dim != 0 && count > long.MaxValue / dim)
                throw Bad("shape is too large");
            count *= dim;
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2
            || off[0].ValueKind != JsonValueKind.Number || off[1].ValueKind != JsonValueKind.Number
            || !off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end))
            throw Bad("data_offsets must be [begin, end]");
        if (begin < 0 || end < begin || end > dataLength)
            throw Bad($"data_offsets [{begin}, {end}] lie outside the {dataLength} data bytes (truncated file?)");
        if (count > long.MaxValue / elementSize || end - begin != count * elementSize)
            throw Bad($"data_offsets span {end - begin} bytes but shape [{string.Join(", ", shape.Take(8))}] of {dtype} needs {(count > long.MaxValue / elementSize ? "more than that" : (count * elementSize).ToString(System.Globalization.CultureInfo.InvariantCulture))}");
        return new SafeTensorEntry(name, dtype, shape, begin, end);
    }

    private static string Shorten(string s) => s.Length <= 60 ? s : string.Concat(s.AsSpan(0, 57), "...");

    /// <summary>
    /// Writes a safetensors file to <paramref name="destination"/>: the header (tensors in ordinal
    /// name order, offsets back to back, padded with spaces to a multiple of 8 bytes), then each
    /// tensor's bytes through its <see cref="SafeTensorSource.WriteData"/>, checked to be as many as
    /// its shape needs.
    /// </summary>
    public static void Write(Stream destination, IEnumerable<SafeTensorSource> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(tensors);
        var sorted = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        var sizes = new long[sorted.Count];
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            if (metadata is not null && metadata.Count > 0)
            {
                json.WriteStartObject(MetadataKey);
                foreach (var (k, v) in metadata)
                    json.WriteString(k, v);
                json.WriteEndObject();
            }
            long offset = 0;
            for (int i = 0; i < sorted.Count; i++)
            {
                var t = sorted[i];
                if (t.Name == MetadataKey)
                    throw new ArgumentException($"a tensor may not be named {MetadataKey} (the header keeps that key for metadata)", nameof(tensors));
                if (i > 0 && sorted[i - 1].Name == t.Name)
                    throw new ArgumentException($"two tensors are named '{Shorten(t.Name)}'", nameof(tensors));
                long count = 1;
                foreach (var d in t.Shape)
                {
                    if (d < 0)
                        throw new ArgumentException($"tensor '{Shorten(t.Name)}' has a negative dimension", nameof(tensors));
                    count = checked(count * d);
                }
                sizes[i] = checked(count * ElementSize(t.DType));
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", t.DType.ToString());
                json.WriteStartArray("shape");
                foreach (var d in t.Shape)
                    json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + sizes[i]);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += sizes[i];
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0)
            header.WriteByte((byte)' ');

        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        destination.Write(len);
        header.Position = 0;
        header.CopyTo(destination);
        for (int i = 0; i < sorted.Count; i++)
        {
            var counting = new CountingStream(destination);
            sorted[i].WriteData(counting);
            if (counting.Written != sizes[i])
                throw new InvalidOperationException($"tensor '{Shorten(sorted[i].Name)}' wrote {counting.Written} bytes; its shape and dtype need {sizes[i]}");
        }
    }

    /// <summary>Writes a safetensors file atomically: to a process-stamped temporary file beside it, then renamed over <paramref name="path"/>.</summary>
    public static void WriteFile(string path, IEnumerable<SafeTensorSource> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var file = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
                Write(file, tensors, metadata);
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    /// <summary>Forwards writes and counts them, so a tensor's writer cannot put a wrong number of bytes in the file unnoticed.</summary>
    private sealed class CountingStream(Stream inner) : Stream
    {
        public long Written { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count)
        {
            inner.Write(buffer, offset, count);
            Written += count;
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            inner.Write(buffer);
            Written += buffer.Length;
        }
    }
}
