using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>One tensor's entry in a safetensors header.</summary>
public sealed record SafeTensorEntry(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reads the safetensors format (8-byte little-endian header length, a JSON header, raw data).
/// The header is validated before any data is touched, so a truncated or lying file fails with a
/// message instead of a crash or a huge allocation. Each tensor is read from disk straight into
/// its own tensor's memory: a model is never held twice.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>Headers larger than this are refused (real headers are a few MB at most).</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private readonly FileStream stream;
    private readonly long dataStart;

    private SafeTensorsFile(string path, FileStream stream, long dataStart, Dictionary<string, SafeTensorEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        this.stream = stream;
        this.dataStart = dataStart;
        Entries = entries;
        Metadata = metadata;
    }

    public string Path { get; }
    public IReadOnlyDictionary<string, SafeTensorEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public static SafeTensorsFile Open(string path)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot open the safetensors file ({e.Message})", e);
        }
        try
        {
            return Parse(path, stream);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    private static SafeTensorsFile Parse(string path, FileStream stream)
    {
        long fileLength = stream.Length;
        if (fileLength < 8)
            throw new ModelFormatException(path, $"not a safetensors file: {fileLength} bytes is shorter than the 8-byte header length");
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength < 2 || headerLength > (ulong)MaxHeaderBytes)
            throw new ModelFormatException(path, $"not a safetensors file: the header length field says {headerLength} bytes (expected 2..{MaxHeaderBytes})");
        if ((long)headerLength > fileLength - 8)
            throw new ModelFormatException(path, $"truncated: the header length field says {headerLength} bytes but only {fileLength - 8} follow");
        var header = new byte[headerLength];
        stream.ReadExactly(header);
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;
        // JsonDocument checks UTF-8 only when a string is read, and then throws
        // InvalidOperationException from deep inside; check it here and say so.
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new ModelFormatException(path, "the safetensors header is not valid UTF-8 (it must be a UTF-8 JSON object); the file is corrupt");

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"the safetensors header is not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(path, "the safetensors header must be a JSON object of tensor entries");
            var entries = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind == JsonValueKind.Object)
                    {
                        foreach (var m in prop.Value.EnumerateObject())
                            metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    }
                    continue;
                }
                entries[prop.Name] = ParseEntry(path, prop.Name, prop.Value, dataLength);
            }
            return new SafeTensorsFile(path, stream, dataStart, entries, metadata);
        }
    }

    private static SafeTensorEntry ParseEntry(string path, string name, JsonElement e, long dataLength)
    {
        ModelFormatException Bad(string problem) => new(path, $"tensor '{name}': {problem}");
        if (e.ValueKind != JsonValueKind.Object)
            throw Bad("entry must be an object with dtype, shape and data_offsets");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Bad("missing dtype");
        string dtype = dt.GetString()!;
        int elementSize = ElementSize(dtype) ?? throw Bad($"unsupported dtype '{dtype}' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw Bad("missing shape");
        var shape = new long[sh.GetArrayLength()];
        long count = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Bad($"shape entry {d.GetRawText()} is not a non-negative integer");
            shape[i++] = dim;
            if (dim != 0 && count > long.MaxValue / dim)
                throw Bad("shape is too large");
            count *= dim;
        }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2
            || !off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end))
            throw Bad("data_offsets must be [begin, end]");
        if (begin < 0 || end < begin || end > dataLength)
            throw Bad($"data_offsets [{begin}, {end}] lie outside the {dataLength} data bytes (truncated file?)");
        if (count > long.MaxValue / elementSize || end - begin != count * elementSize)
            throw Bad($"data_offsets span {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {count * elementSize}");
        return new SafeTensorEntry(name, dtype, shape, begin, end);
    }

    private static int? ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" => 8,
        "F32" or "I32" => 4,
        "F16" or "BF16" or "I16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => null,
    };

    internal static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unsupported dtype"),
    };

    /// <summary>Reads a tensor, converted to <paramref name="dtype"/> when given. Not thread-safe.</summary>
    public Tensor Read(string name, ScalarType? dtype = null)
    {
        if (!Entries.TryGetValue(name, out var entry))
            throw new ModelFormatException(Path, $"missing tensor '{name}'");
        var raw = empty(entry.Shape, ToScalarType(entry.DType));
        try
        {
            stream.Seek(dataStart + entry.Begin, SeekOrigin.Begin);
            TensorIO.ReadInto(stream, raw);
        }
        catch (EndOfStreamException e)
        {
            raw.Dispose();
            throw new ModelFormatException(Path, $"truncated while reading tensor '{name}'", e);
        }
        if (dtype is null || dtype == raw.dtype)
            return raw;
        var converted = raw.to(dtype.Value);
        raw.Dispose();
        return converted;
    }

    public void Dispose() => stream.Dispose();

    /// <summary>Writes tensors in the safetensors format (header padded to 8 bytes), atomically.</summary>
    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            if (metadata is not null && metadata.Count > 0)
            {
                json.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata)
                    json.WriteString(k, v);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var name in names)
            {
                var t = tensors[name];
                long bytes = t.numel() * t.ElementSize;
                json.WriteStartObject(name);
                json.WriteString("dtype", DTypeName(t.dtype));
                json.WriteStartArray("shape");
                foreach (var d in t.shape)
                    json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }
        while (header.Length % 8 != 0)
            header.WriteByte((byte)' ');

        string tmp = path + ".tmp-" + Environment.ProcessId;
        using (var file = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
            file.Write(len);
            header.Position = 0;
            header.CopyTo(file);
            foreach (var name in names)
            {
                TensorIO.WriteFrom(file, tensors[name]);
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    private static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "dtype has no safetensors name"),
    };
}
