using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.SAE.Formats;

/// <summary>
/// NumPy's <c>.npz</c> (a zip of <c>.npy</c> files, stored or deflated, as <c>np.savez</c> and
/// <c>np.savez_compressed</c> write) for little-endian float32 and float64 arrays in C order, the
/// arrays Gemma Scope ships. An <c>.npy</c> file: the magic <c>\x93NUMPY</c>, a version (1.0: a
/// 2-byte header length; 2.0 and 3.0: 4 bytes), a Python-literal header dict
/// <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (3, 4), }</c>, then the data.
/// </summary>
internal static partial class Npz
{
    // An array is read into one byte[] (as the artifact store hands files over), so at most 2 GB.
    private const long MaxArrayBytes = int.MaxValue - 4096;

    /// <summary>The arrays of an .npz file by name (without ".npy") as float32 tensors the caller disposes.</summary>
    public static Dictionary<string, Tensor> Read(byte[] bytes, string where)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            using var zip = new ZipArchive(new MemoryStream(bytes, writable: false), ZipArchiveMode.Read);
            foreach (var entry in zip.Entries)
            {
                if (!entry.FullName.EndsWith(".npy", StringComparison.Ordinal))
                    throw new InvalidParametersException($"{where} holds '{entry.FullName}', which is not an .npy array");
                string name = entry.FullName[..^4];
                if (entry.Length > MaxArrayBytes)
                    throw new InvalidParametersException($"{where}: array '{name}' is {entry.Length} bytes, more than {MaxArrayBytes}");
                using var stream = entry.Open();
                using var buffer = new MemoryStream((int)entry.Length);
                stream.CopyTo(buffer);
                if (!result.TryAdd(name, ReadNpy(buffer.ToArray(), $"{where}/{name}")))
                    throw new InvalidParametersException($"{where} holds array '{name}' twice");
            }
        }
        catch (InvalidDataException e)
        {
            foreach (var t in result.Values)
                t.Dispose();
            throw new InvalidParametersException($"{where} is not a valid .npz (zip) file: {e.Message}");
        }
        catch
        {
            foreach (var t in result.Values)
                t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>One .npy array as a float32 tensor.</summary>
    public static Tensor ReadNpy(byte[] npy, string where)
    {
        ReadOnlySpan<byte> magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];
        if (npy.Length < 10 || !npy.AsSpan(0, 6).SequenceEqual(magic))
            throw new InvalidParametersException($"{where} is not an .npy array (no \\x93NUMPY magic)");
        int major = npy[6];
        int headerLength, start;
        if (major == 1)
        {
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(npy.AsSpan(8));
            start = 10;
        }
        else if (major is 2 or 3 && npy.Length >= 12)
        {
            headerLength = (int)Math.Min(int.MaxValue, BinaryPrimitives.ReadUInt32LittleEndian(npy.AsSpan(8)));
            start = 12;
        }
        else
        {
            throw new InvalidParametersException($"{where}: .npy version {major} is not supported (1, 2 and 3 are)");
        }
        if (start + (long)headerLength > npy.Length)
            throw new InvalidParametersException($"{where}: the .npy header runs past the end of the file");
        string header = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetString(npy, start, headerLength);
        string descr = Field(DescrPattern(), header, "descr", where);
        string fortran = Field(FortranPattern(), header, "fortran_order", where);
        string shapeText = Field(ShapePattern(), header, "shape", where);
        if (fortran != "False")
            throw new InvalidParametersException($"{where}: fortran_order True is not supported (save the array in C order)");
        long[] shape = [.. shapeText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s =>
            long.TryParse(s, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long d) ? d
                : throw new InvalidParametersException($"{where}: shape ({shapeText}) is not a tuple of sizes"))];
        int size = descr switch
        {
            "<f4" => 4,
            "<f8" => 8,
            _ => throw new InvalidParametersException($"{where}: dtype '{descr}' is not supported (little-endian float32 '<f4' and float64 '<f8' are)"),
        };
        long count = 1;
        foreach (long d in shape)
        {
            count = checked(count * d);
            if (count * size > MaxArrayBytes)
                throw new InvalidParametersException($"{where}: shape ({shapeText}) is too large");
        }
        int data = start + headerLength;
        if (npy.Length - data != count * size)
            throw new InvalidParametersException($"{where}: shape ({shapeText}) of '{descr}' needs {count * size} bytes of data, the file has {npy.Length - data}");
        var span = npy.AsSpan(data);
        if (size == 4)
        {
            var values = new float[count];
            for (long i = 0; i < count; i++)
                values[i] = BinaryPrimitives.ReadSingleLittleEndian(span[(int)(i * 4)..]);
            return tensor(values, shape);
        }
        var doubles = new float[count];
        for (long i = 0; i < count; i++)
            doubles[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(span[(int)(i * 8)..]);
        return tensor(doubles, shape);
    }

    private static string Field(Regex pattern, string header, string name, string where)
    {
        var m = pattern.Match(header);
        return m.Success ? m.Groups[1].Value : throw new InvalidParametersException($"{where}: the .npy header has no '{name}'");
    }

    [GeneratedRegex(@"'descr'\s*:\s*'([^']*)'")]
    private static partial Regex DescrPattern();

    [GeneratedRegex(@"'fortran_order'\s*:\s*(True|False)")]
    private static partial Regex FortranPattern();

    [GeneratedRegex(@"'shape'\s*:\s*\(([^)]*)\)")]
    private static partial Regex ShapePattern();
}
