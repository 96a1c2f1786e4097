using System.IO.MemoryMappedFiles;
using InterpMesh.Contracts.Tensors;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>
/// A safetensors file opened for reading into torch tensors. The format itself (header parsing
/// and validation, the dtype table, data offsets, writing) is the one codec in
/// <see cref="SafeTensorsFormat"/>; this class is the runtime's TorchSharp layer on top of it.
/// Tensors are read through a memory map, one bounded slice at a time, straight into their
/// destination (converted to its dtype and device on the way): neither a whole file nor a second
/// copy of a tensor is ever resident.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    private readonly FileStream stream;
    private readonly long dataStart;
    private MemoryMappedFile? map;
    // One slice-sized staging buffer per source dtype, kept until the file is closed: allocating and
    // freeing it per tensor would raise glibc's mmap threshold, so later weights would come from the
    // heap around its freed holes (measured: +4% resident memory on a 1B model).
    private readonly Dictionary<ScalarType, Tensor> staging = [];

    private SafeTensorsFile(string path, FileStream stream, SafeTensorsHeader header)
    {
        Path = path;
        this.stream = stream;
        dataStart = header.DataStart;
        Entries = header.Entries;
        Metadata = header.Metadata;
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
            return new SafeTensorsFile(path, stream, SafeTensorsFormat.ReadHeader(stream, path));
        }
        catch (SafeTensorsFormatException e)
        {
            stream.Dispose();
            throw new ModelFormatException(path, e.Problem, e);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The torch dtype of a safetensors dtype (the codec numbers them as torch does).</summary>
    internal static ScalarType ToScalarType(SafeTensorsDType dtype) => (ScalarType)(int)dtype;

    /// <summary>
    /// Reads a tensor into new memory of <paramref name="dtype"/> (the stored dtype when null) on
    /// <paramref name="device"/> (the CPU when null). The destination is allocated once and filled
    /// slice by slice from the memory map: no second full-size copy exists at any time. Not
    /// thread-safe: the file keeps one staging buffer per source dtype.
    /// </summary>
    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null)
    {
        var entry = Entry(name);
        var t = empty(entry.Shape, dtype ?? ToScalarType(entry.DType), device: device ?? CPU);
        try
        {
            ReadInto(name, t);
        }
        catch
        {
            t.Dispose();
            throw;
        }
        return t;
    }

    /// <summary>The entry of a tensor, or an error naming it.</summary>
    public SafeTensorEntry Entry(string name) =>
        Entries.TryGetValue(name, out var entry) ? entry : throw new ModelFormatException(Path, $"missing tensor '{name}'");

    /// <summary>
    /// Fills <paramref name="destination"/> (contiguous, any dtype and device, as many elements as the
    /// stored tensor) with the tensor's values, converted on the way. Used to read parts of a fused
    /// matrix straight into their rows.
    /// </summary>
    public void ReadInto(string name, Tensor destination)
    {
        var entry = Entry(name);
        long count = entry.Shape.Aggregate(1L, (a, d) => a * d);
        if (destination.numel() != count || !destination.is_contiguous())
            throw new ArgumentException($"tensor '{name}' has {count} elements; the destination must be contiguous with as many (it has {destination.numel()})");
        using var flat = destination.view(-1);
        Copy(entry, flat, transposeColumns: 0);
    }

    /// <summary>
    /// Reads a stored 2-D tensor <c>[rows, cols]</c> as its transpose <c>[cols, rows]</c> (contiguous),
    /// converted to <paramref name="dtype"/>, without ever holding the untransposed matrix (GPT-2's
    /// Conv1D weights).
    /// </summary>
    public Tensor ReadTransposed(string name, ScalarType dtype, Device? device = null)
    {
        var entry = Entry(name);
        if (entry.Shape.Length != 2)
            throw new ModelFormatException(Path, $"tensor '{name}' has shape [{string.Join(", ", entry.Shape)}]; a 2-D matrix was expected");
        var t = empty([entry.Shape[1], entry.Shape[0]], dtype, device: device ?? CPU);
        try
        {
            Copy(entry, t, transposeColumns: entry.Shape[1]);
        }
        catch
        {
            t.Dispose();
            throw;
        }
        return t;
    }

    /// <summary>
    /// Moves a stored tensor's bytes into <paramref name="destination"/> in slices of at most
    /// <see cref="TensorIO.SliceBytes"/>, each through its own view of the memory map that is unmapped
    /// right after, so the file's pages never accumulate in this process's resident memory. Same dtype
    /// on the CPU: one copy from the map into the destination. Otherwise: a copy into a reused
    /// slice-sized staging tensor, then one converting copy into the destination. With
    /// <paramref name="transposeColumns"/> &gt; 0 the stored matrix has that many columns and the
    /// destination is its transpose.
    /// </summary>
    private void Copy(SafeTensorEntry entry, Tensor destination, long transposeColumns)
    {
        long bytes = entry.End - entry.Begin;
        if (bytes == 0)
            return;
        var source = ToScalarType(entry.DType);
        int size = SafeTensorsFormat.ElementSize(entry.DType);
        long unit = transposeColumns > 0 ? transposeColumns * size : size; // a slice holds whole rows
        long perSlice = Math.Max(1, TensorIO.SliceBytes / unit);
        long units = bytes / unit;
        bool direct = transposeColumns == 0 && destination.dtype == source && destination.device_type == DeviceType.CPU;
        try
        {
            for (long done = 0; done < units; done += perSlice)
            {
                long n = Math.Min(perSlice, units - done);
                long sliceEnd = dataStart + entry.Begin + (done + n) * unit;
                // The header was checked against the file's length at open; the file may have been
                // cut since, and touching a mapped page past its end kills the process (SIGBUS). So
                // look again before each slice (one fstat per 16 MB).
                long length = stream.Length;
                if (sliceEnd > length)
                    throw new ModelFormatException(Path, $"truncated while reading tensor '{entry.Name}': the file is now {length} bytes, the tensor ends at byte {dataStart + entry.End}");
                using var view = Map().CreateViewStream(dataStart + entry.Begin + done * unit, n * unit, MemoryMappedFileAccess.Read);
                if (direct)
                {
                    using var part = destination.narrow(0, done, n);
                    TensorIO.ReadInto(view, part);
                    continue;
                }
                using var slice = Staging(source, size, n * unit).narrow(0, 0, n * unit / size);
                using var stage = transposeColumns > 0 ? slice.view(n, transposeColumns) : slice.view(n);
                TensorIO.ReadInto(view, stage);
                if (transposeColumns > 0)
                {
                    using var columns = destination.narrow(1, done, n);
                    using var transposed = stage.t();
                    columns.copy_(transposed);
                }
                else
                {
                    using var part = destination.narrow(0, done, n);
                    part.copy_(stage);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(Path, $"cannot read tensor '{entry.Name}' ({e.Message})", e);
        }
    }

    private Tensor Staging(ScalarType dtype, int size, long bytes)
    {
        if (!staging.TryGetValue(dtype, out var buffer) || buffer.numel() * size < bytes)
        {
            buffer?.Dispose();
            // A slice exceeds SliceBytes only when one row of a transposed matrix does.
            // Owned by this file, not by whatever dispose scope the caller has open.
            staging[dtype] = buffer = empty(Math.Max(TensorIO.SliceBytes, bytes) / size, dtype).DetachFromDisposeScope();
        }
        return buffer;
    }

    private MemoryMappedFile Map()
    {
        // Mapped on first use: opening a file to read its header maps nothing.
        lock (stream)
        {
            map ??= MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
            return map;
        }
    }

    public void Dispose()
    {
        foreach (var t in staging.Values)
            t.Dispose();
        staging.Clear();
        map?.Dispose();
        stream.Dispose();
    }

    /// <summary>Writes tensors in the safetensors format (header padded to 8 bytes), atomically.</summary>
    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null) =>
        SafeTensorsFormat.WriteFile(path, tensors.Select(kv => new SafeTensorSource(kv.Key, DTypeOf(kv.Key, kv.Value), kv.Value.shape, s => TensorIO.WriteFrom(s, kv.Value))), metadata);

    private static SafeTensorsDType DTypeOf(string name, Tensor t) =>
        SafeTensorsFormat.FromScalarTypeCode((int)t.dtype)
        ?? throw new ArgumentException($"tensor '{name}' is {t.dtype}, which safetensors cannot store", nameof(t));
}
