using System.Text.Json.Nodes;
using InterpMesh.Contracts.Tensors;
using TorchSharp;

namespace InterpMesh.Plugins;

/// <summary>
/// safetensors for plugins and artifact stores: torch tensors to and from the format, through the
/// one codec (<see cref="SafeTensorsFormat"/>, which the model runtime reads weights with too), and
/// the artifact-store calls that save tensors and release them.
/// </summary>
public static class SafeTensors
{
    /// <summary>The file an artifact store writes <see cref="IArtifactStore.SaveTensorsAsync"/>'s tensors to.</summary>
    public const string ArtifactFile = "tensors.safetensors";

    // Tensors move in slices of at most this many bytes (a span over a tensor is limited to 2 GB).
    private const long SliceBytes = 16L << 20;

    /// <summary>The torch dtype of a safetensors dtype.</summary>
    public static torch.ScalarType ToScalarType(this SafeTensorsDType dtype) =>
        Enum.IsDefined(dtype) ? (torch.ScalarType)(int)dtype : throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype");

    /// <summary>The safetensors dtype of a torch dtype (float64/32/16, bfloat16, int64/32/16/8, uint8, bool).</summary>
    public static SafeTensorsDType ToSafeTensorsDType(this torch.ScalarType dtype) =>
        SafeTensorsFormat.FromScalarTypeCode((int)dtype)
        ?? throw new ArgumentException($"dtype {dtype} cannot be stored in safetensors (it stores float64/32/16, bfloat16, int64/32/16/8, uint8 and bool)", nameof(dtype));

    // Header metadata from an artifact's JSON metadata: string values as they are, any other value
    // as its JSON text (safetensors metadata is a string-to-string map).
    private static Dictionary<string, string> HeaderMetadata(JsonObject? metadata) =>
        (metadata ?? []).ToDictionary(kv => kv.Key, kv => kv.Value is JsonValue v && v.TryGetValue<string>(out var s) ? s : kv.Value?.ToJsonString() ?? "null", StringComparer.Ordinal);

    /// <summary>
    /// Writes tensors (any device, any layout: each is copied to the CPU and made contiguous slice
    /// by slice) as a safetensors file to <paramref name="destination"/>. The tensors stay the
    /// caller's. <paramref name="metadata"/> goes into the header's <c>__metadata__</c>: string
    /// values as they are, any other value as its JSON text.
    /// </summary>
    public static void Write(Stream destination, IReadOnlyDictionary<string, torch.Tensor> tensors, JsonObject? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(tensors);
        SafeTensorsFormat.Write(destination, tensors.Select(kv => new SafeTensorSource(kv.Key, DTypeOf(kv.Key, kv.Value), kv.Value.shape, s => WriteBytes(s, kv.Value))), HeaderMetadata(metadata));
    }

    /// <summary>The bytes of a safetensors file holding <paramref name="tensors"/> (which stay the caller's).</summary>
    public static byte[] ToBytes(IReadOnlyDictionary<string, torch.Tensor> tensors, JsonObject? metadata = null)
    {
        using var buffer = new MemoryStream();
        Write(buffer, tensors, metadata);
        return buffer.ToArray();
    }

    /// <summary>
    /// Reads every tensor of a safetensors file into new CPU tensors (stored dtype) that the caller
    /// disposes. <paramref name="source"/> names the file in errors. The stream must be seekable.
    /// </summary>
    /// <exception cref="SafeTensorsFormatException">The file is not safetensors, or is truncated or corrupt.</exception>
    public static Dictionary<string, torch.Tensor> Read(Stream stream, string source)
    {
        ArgumentNullException.ThrowIfNull(stream);
        long start = stream.Position;
        var header = SafeTensorsFormat.ReadHeader(stream, source);
        var result = new Dictionary<string, torch.Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var entry in header.Entries.Values.OrderBy(e => e.Begin))
            {
                var t = torch.empty(entry.Shape, entry.DType.ToScalarType());
                result[entry.Name] = t;
                stream.Position = start + header.DataStart + entry.Begin;
                ReadBytes(stream, t, source, entry.Name);
            }
        }
        catch
        {
            foreach (var t in result.Values)
                t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Reads every tensor of a safetensors file held in memory (new CPU tensors the caller disposes).</summary>
    /// <exception cref="SafeTensorsFormatException">The bytes are not safetensors, or are truncated or corrupt.</exception>
    public static Dictionary<string, torch.Tensor> Read(byte[] file, string source)
    {
        ArgumentNullException.ThrowIfNull(file);
        using var stream = new MemoryStream(file, writable: false);
        return Read(stream, source);
    }

    /// <summary>
    /// Saves tensors made only to be saved and disposes every one of them, whether the save
    /// succeeds or fails: the "save, then dispose in finally" of a plugin in one call.
    /// </summary>
    public static async Task<StoredArtifact> SaveTensorsAndDisposeAsync(this IArtifactStore store, string name, IReadOnlyDictionary<string, torch.Tensor> tensors,
        JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(tensors);
        try
        {
            return await store.SaveTensorsAsync(name, tensors, metadata, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    private static SafeTensorsDType DTypeOf(string name, torch.Tensor t) =>
        SafeTensorsFormat.FromScalarTypeCode((int)t.dtype)
        ?? throw new ArgumentException($"tensor '{name}' is {t.dtype}, which safetensors cannot store (it stores float64/32/16, bfloat16, int64/32/16/8, uint8 and bool)", nameof(t));

    private static void WriteBytes(Stream stream, torch.Tensor t)
    {
        using var scope = torch.NewDisposeScope();
        var flat = t.detach().cpu().contiguous().view(-1);
        long perSlice = Math.Max(1, SliceBytes / t.ElementSize);
        long n = flat.numel();
        for (long done = 0; done < n; done += perSlice)
            stream.Write(flat.narrow(0, done, Math.Min(perSlice, n - done)).bytes);
    }

    private static void ReadBytes(Stream stream, torch.Tensor t, string source, string name)
    {
        using var scope = torch.NewDisposeScope();
        var flat = t.view(-1);
        long perSlice = Math.Max(1, SliceBytes / t.ElementSize);
        long n = flat.numel();
        for (long done = 0; done < n; done += perSlice)
        {
            try
            {
                stream.ReadExactly(flat.narrow(0, done, Math.Min(perSlice, n - done)).bytes);
            }
            catch (EndOfStreamException e)
            {
                throw new SafeTensorsFormatException(source, $"truncated while reading tensor '{name}'", e);
            }
        }
    }
}
