using System.Buffers.Binary;
using System.Text;

namespace InterpMesh.Plugins.Steering.Export;

/// <summary>
/// llama.cpp control vectors: GGUF files (written and read from the GGUF specification) with
/// <c>general.architecture = "controlvector"</c>, <c>controlvector.model_hint</c> (the Hugging Face
/// <c>model_type</c>), <c>controlvector.layer_count</c> (int32) and one tensor <c>direction.N</c>
/// [n_embd] per steered block. llama.cpp adds <c>direction.N</c> to the output of block N (0-based),
/// which is TransformerLens' <c>blocks.N.hook_resid_post</c>; it refuses N = 0, so block 0's
/// output cannot be steered by llama.cpp and is left out. repeng writes the same numbering.
/// </summary>
internal static class GgufControlVector
{
    private const uint Magic = 0x46554747; // "GGUF"
    private const uint Version = 3;
    private const uint TypeUInt8 = 0, TypeInt8 = 1, TypeUInt16 = 2, TypeInt16 = 3, TypeUInt32 = 4, TypeInt32 = 5, TypeFloat32 = 6,
        TypeBool = 7, TypeString = 8, TypeArray = 9, TypeUInt64 = 10, TypeInt64 = 11, TypeFloat64 = 12;
    private const uint TensorF32 = 0, TensorF16 = 1;
    private const int DefaultAlignment = 32;

    /// <summary>What <see cref="Write"/> wrote: the file, and the blocks it left out.</summary>
    public sealed record Written(byte[] File, IReadOnlyList<int> SkippedBlocks);

    /// <summary>
    /// A control vector for <paramref name="directions"/> keyed by block L (the direction measured at
    /// <c>blocks.L.hook_resid_post</c>), written as <c>direction.L</c>; block 0 is skipped.
    /// <paramref name="normalize"/> scales each direction to unit length, as cvector-generator does.
    /// </summary>
    public static Written Write(string modelHint, int layerCount, IReadOnlyDictionary<int, float[]> directions, bool normalize)
    {
        using var stream = new MemoryStream();
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        void Str(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            w.Write((ulong)bytes.Length);
            w.Write(bytes);
        }
        var skipped = directions.Keys.Where(l => l < 1).Order().ToList();
        var layers = directions.Keys.Where(l => l >= 1).Order().ToList();
        var values = layers.ToDictionary(l => l, l => normalize ? Unit(directions[l]) : directions[l]);
        w.Write(Magic);
        w.Write(Version);
        w.Write((ulong)layers.Count);
        w.Write(3UL);
        Str("general.architecture");
        w.Write(TypeString);
        Str("controlvector");
        Str("controlvector.model_hint");
        w.Write(TypeString);
        Str(modelHint);
        Str("controlvector.layer_count");
        w.Write(TypeInt32);
        w.Write(layerCount);
        ulong offset = 0;
        foreach (int layer in layers)
        {
            var v = values[layer];
            Str($"direction.{layer}");
            w.Write(1u);
            w.Write((ulong)v.Length);
            w.Write(TensorF32);
            w.Write(offset);
            offset += Pad((ulong)v.Length * 4, DefaultAlignment);
        }
        w.Flush();
        while (stream.Length % DefaultAlignment != 0)
            w.Write((byte)0);
        foreach (int layer in layers)
        {
            foreach (var x in values[layer])
                w.Write(x);
            while (stream.Length % DefaultAlignment != 0)
                w.Write((byte)0);
        }
        w.Flush();
        return new Written(stream.ToArray(), skipped);
    }

    /// <summary>A control vector read back: its model hint and one direction per block.</summary>
    public sealed record ControlVector(string? ModelHint, int? LayerCount, IReadOnlyDictionary<int, float[]> Directions);

    /// <summary>
    /// Reads a control vector written by llama.cpp's cvector-generator, repeng or <see cref="Write"/>:
    /// every <c>direction.N</c> tensor (F32 or F16, one dimension) becomes the direction of block N.
    /// Anything else is refused with what is wrong (<paramref name="name"/> names the file).
    /// </summary>
    public static ControlVector Read(byte[] file, string name)
    {
        var r = new Reader(file, name);
        if (file.Length < 24 || BinaryPrimitives.ReadUInt32LittleEndian(file) != Magic)
            throw r.Error("is not a GGUF file (no GGUF magic)");
        r.Skip(4);
        uint version = r.U32();
        if (version is not (2 or 3))
            throw r.Error($"is GGUF version {version}; versions 2 and 3 are read");
        ulong tensorCount = r.U64(), kvCount = r.U64();
        if (tensorCount > 100_000 || kvCount > 100_000)
            throw r.Error("declares an implausible number of tensors or metadata keys");
        string? architecture = null, hint = null;
        int? layerCount = null;
        int alignment = DefaultAlignment;
        for (ulong i = 0; i < kvCount; i++)
        {
            string key = r.Str();
            uint type = r.U32();
            switch (key)
            {
                case "general.architecture" when type == TypeString:
                    architecture = r.Str();
                    break;
                case "controlvector.model_hint" when type == TypeString:
                    hint = r.Str();
                    break;
                case "controlvector.layer_count" when type is TypeInt32 or TypeUInt32:
                    layerCount = (int)r.U32();
                    break;
                case "general.alignment" when type == TypeUInt32:
                    alignment = (int)r.U32();
                    if (alignment <= 0 || alignment % 8 != 0)
                        throw r.Error($"has general.alignment {alignment}; it must be a positive multiple of 8");
                    break;
                default:
                    r.SkipValue(type);
                    break;
            }
        }
        if (architecture != "controlvector")
            throw r.Error($"is a GGUF file of architecture '{Quote(architecture ?? "(none)")}', not a control vector (general.architecture = controlvector)");
        var infos = new List<(int Block, long Length, uint Type, ulong Offset)>();
        for (ulong i = 0; i < tensorCount; i++)
        {
            string tensor = r.Str();
            uint dims = r.U32();
            if (dims is 0 or > 4)
                throw r.Error($"tensor '{Quote(tensor)}' has {dims} dimensions");
            var shape = new ulong[dims];
            for (int d = 0; d < dims; d++)
                shape[d] = r.U64();
            uint type = r.U32();
            ulong offset = r.U64();
            if (!tensor.StartsWith("direction.", StringComparison.Ordinal) || !int.TryParse(tensor.AsSpan("direction.".Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int block))
                throw r.Error($"has a tensor '{Quote(tensor)}'; a control vector holds only direction.N tensors");
            if (block < 1)
                throw r.Error($"has {tensor}; llama.cpp numbers directions from 1 (direction.N is added to block N's output)");
            if (dims != 1 || shape[0] == 0 || shape[0] > 1_000_000)
                throw r.Error($"tensor {tensor} has shape [{string.Join(", ", shape)}]; a direction is one vector [n_embd]");
            if (type is not (TensorF32 or TensorF16))
                throw r.Error($"tensor {tensor} has GGUF type {type}; F32 (0) and F16 (1) directions are read");
            if (infos.Any(x => x.Block == block))
                throw r.Error($"has {tensor} twice");
            infos.Add((block, (long)shape[0], type, offset));
        }
        long dataStart = Pad((ulong)r.Position, alignment) is var p && p <= (ulong)file.Length ? (long)p : throw r.Error("ends before its tensor data");
        var directions = new Dictionary<int, float[]>();
        foreach (var (block, length, type, offset) in infos)
        {
            long bytes = length * (type == TensorF32 ? 4 : 2);
            if (offset > (ulong)(file.Length - dataStart) || (long)offset + bytes > file.Length - dataStart)
                throw r.Error($"direction.{block}'s data lies beyond the end of the file");
            var span = file.AsSpan((int)(dataStart + (long)offset), (int)bytes);
            var v = new float[length];
            for (int k = 0; k < length; k++)
                v[k] = type == TensorF32 ? BinaryPrimitives.ReadSingleLittleEndian(span[(4 * k)..]) : (float)BinaryPrimitives.ReadHalfLittleEndian(span[(2 * k)..]);
            if (v.Any(x => !float.IsFinite(x)))
                throw r.Error($"direction.{block} has NaN or infinite values");
            directions[block] = v;
        }
        if (directions.Count == 0)
            throw r.Error("holds no direction tensors");
        return new ControlVector(hint, layerCount, directions);
    }

    private static float[] Unit(float[] v)
    {
        double norm = Math.Sqrt(v.Sum(x => (double)x * x));
        return norm == 0 ? v : [.. v.Select(x => (float)(x / norm))];
    }

    private static string Quote(string s) => s.Length <= 60 ? s : s[..60] + "…";

    private static ulong Pad(ulong n, int alignment) => (n + (ulong)alignment - 1) / (ulong)alignment * (ulong)alignment;

    private sealed class Reader(byte[] data, string name)
    {
        public int Position { get; private set; }

        public InvalidParametersException Error(string problem) => new($"'{Quote(name)}' {problem}");

        private ReadOnlySpan<byte> Take(long n)
        {
            if (n < 0 || n > data.Length - Position)
                throw Error("is truncated: its header runs past the end of the file");
            var span = data.AsSpan(Position, (int)n);
            Position += (int)n;
            return span;
        }

        public void Skip(long n) => Take(n);
        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));

        public string Str()
        {
            ulong n = U64();
            if (n > 1 << 20)
                throw Error("has a string longer than 1 MiB in its header");
            try
            {
                return new UTF8Encoding(false, true).GetString(Take((long)n));
            }
            catch (DecoderFallbackException)
            {
                throw Error("has a string in its header that is not UTF-8");
            }
        }

        public void SkipValue(uint type)
        {
            switch (type)
            {
                case TypeUInt8 or TypeInt8 or TypeBool: Skip(1); break;
                case TypeUInt16 or TypeInt16: Skip(2); break;
                case TypeUInt32 or TypeInt32 or TypeFloat32: Skip(4); break;
                case TypeUInt64 or TypeInt64 or TypeFloat64: Skip(8); break;
                case TypeString: Str(); break;
                case TypeArray:
                    {
                        uint inner = U32();
                        ulong count = U64();
                        if (count > (ulong)data.Length)
                            throw Error("has a metadata array longer than the file");
                        for (ulong i = 0; i < count; i++)
                            SkipValue(inner);
                        break;
                    }
                default:
                    throw Error($"has metadata of unknown GGUF type {type}");
            }
        }
    }
}
