using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using Google.Protobuf;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Contracts.Tensors;

/// <summary>
/// A tensor as the wire carries it (<c>interpmesh.v1.Tensor</c>, <c>ActivationChunk</c>): a dtype,
/// a shape and little-endian bytes, checked once when it is made (known dtype, at most
/// <see cref="MaxRank"/> dimensions, none negative, exactly as many bytes as the shape needs).
/// The one codec every .NET side uses: the model service, the gateway, plugins, the CLI.
/// </summary>
public sealed class WireTensor
{
    /// <summary>Most dimensions a wire tensor may have (no activation has more than a handful).</summary>
    public const int MaxRank = 8;

    /// <summary>Largest byte count a wire tensor can describe (a gRPC message is far smaller).</summary>
    public const long MaxBytes = int.MaxValue;

    private readonly long[] shape;

    private WireTensor(DType dtype, long[] shape, ReadOnlyMemory<byte> data, long elements)
    {
        DType = dtype;
        this.shape = shape;
        Data = data;
        ElementCount = elements;
    }

    public DType DType { get; }

    public IReadOnlyList<long> Shape => shape;

    /// <summary>The little-endian element bytes, row-major.</summary>
    public ReadOnlyMemory<byte> Data { get; }

    public long ElementCount { get; }

    /// <summary>Bytes per element of <paramref name="dtype"/>, or null for a dtype the wire does not carry.</summary>
    public static int? ElementSize(DType dtype) => dtype switch
    {
        DType.Float32 => 4,
        DType.Bfloat16 or DType.Float16 => 2,
        DType.Int64 => 8,
        _ => null,
    };

    /// <summary>
    /// Checks a dtype, shape and bytes; <paramref name="what"/> names the tensor in the error
    /// ("interventions[0].value"), which says what to fix and quotes at most the first dimensions.
    /// </summary>
    public static bool TryCreate(DType dtype, IReadOnlyList<long> shape, ReadOnlyMemory<byte> data, string what,
        [NotNullWhen(true)] out WireTensor? tensor, [NotNullWhen(false)] out string? error)
    {
        tensor = null;
        if (ElementSize(dtype) is not int size)
        {
            error = $"{what}: dtype must be FLOAT32, BFLOAT16, FLOAT16 or INT64, got {dtype}";
            return false;
        }
        if (shape.Count > MaxRank)
        {
            error = $"{what}: shape has {shape.Count} dimensions; at most {MaxRank} are accepted";
            return false;
        }
        long count = 1;
        foreach (var d in shape)
        {
            if (d < 0)
            {
                error = $"{what}: shape [{string.Join(", ", shape)}] has a negative dimension";
                return false;
            }
            // Overflow-safe: a shape whose byte count passes what a message can carry is refused by name.
            if (d != 0 && count > MaxBytes / size / d)
            {
                error = $"{what}: shape [{string.Join(", ", shape.Take(MaxRank))}] holds more bytes than a message can carry; send a smaller tensor";
                return false;
            }
            count *= d;
        }
        long expected = count * size;
        if (data.Length != expected)
        {
            error = $"{what}: shape [{string.Join(", ", shape)}] of {dtype} needs {expected} bytes, got {data.Length}";
            return false;
        }
        error = null;
        tensor = new WireTensor(dtype, [.. shape], data, count);
        return true;
    }

    /// <summary>As <see cref="TryCreate"/>; a bad tensor throws <see cref="InvalidDataException"/> with the message.</summary>
    public static WireTensor Create(DType dtype, IReadOnlyList<long> shape, ReadOnlyMemory<byte> data, string what)
        => TryCreate(dtype, shape, data, what, out var tensor, out var error) ? tensor : throw new InvalidDataException(error);

    /// <summary>Reads a wire <c>Tensor</c> message without copying its bytes.</summary>
    public static bool TryFromProto(V1.Tensor proto, string what, [NotNullWhen(true)] out WireTensor? tensor, [NotNullWhen(false)] out string? error)
    {
        ArgumentNullException.ThrowIfNull(proto);
        return TryCreate(proto.Dtype, proto.Shape, proto.Data.Memory, what, out tensor, out error);
    }

    /// <summary>As <see cref="TryFromProto"/>; a bad tensor throws <see cref="InvalidDataException"/>.</summary>
    public static WireTensor FromProto(V1.Tensor proto, string what)
        => TryFromProto(proto, what, out var tensor, out var error) ? tensor : throw new InvalidDataException(error);

    /// <summary>A float32 tensor holding a copy of <paramref name="values"/> (shape: one dimension of their length unless given).</summary>
    public static WireTensor FromFloat32(ReadOnlySpan<float> values, params long[] shape)
        => Create(DType.Float32, shape.Length == 0 ? [values.Length] : shape, MemoryMarshal.AsBytes(values).ToArray(), "tensor");

    /// <summary>An int64 tensor holding a copy of <paramref name="values"/>.</summary>
    public static WireTensor FromInt64(ReadOnlySpan<long> values, params long[] shape)
        => Create(DType.Int64, shape.Length == 0 ? [values.Length] : shape, MemoryMarshal.AsBytes(values).ToArray(), "tensor");

    /// <summary>The wire message; shares this tensor's bytes (they are never written after creation).</summary>
    public V1.Tensor ToProto()
    {
        var proto = new V1.Tensor { Dtype = DType, Data = UnsafeByteOperations.UnsafeWrap(Data) };
        proto.Shape.AddRange(shape);
        return proto;
    }

    /// <summary>The elements as float32: float32 as stored, bfloat16 and float16 widened exactly.</summary>
    public float[] ToFloat32()
    {
        var bytes = Data.Span;
        switch (DType)
        {
            case DType.Float32:
                return MemoryMarshal.Cast<byte, float>(bytes).ToArray();
            case DType.Bfloat16:
            {
                var result = new float[ElementCount];
                for (int i = 0; i < result.Length; i++)
                    result[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16);
                return result;
            }
            case DType.Float16:
            {
                var result = new float[ElementCount];
                for (int i = 0; i < result.Length; i++)
                    result[i] = (float)BitConverter.UInt16BitsToHalf(BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]));
                return result;
            }
            default:
                throw new InvalidOperationException($"a {DType} tensor has no float values; read it with ToInt64");
        }
    }

    /// <summary>The elements of an INT64 tensor.</summary>
    public long[] ToInt64() => DType == DType.Int64
        ? MemoryMarshal.Cast<byte, long>(Data.Span).ToArray()
        : throw new InvalidOperationException($"a {DType} tensor has no integer values; read it with ToFloat32");

    /// <summary>
    /// The float32 elements as rows of the last dimension (for [batch, vocab] logits: one array per row).
    /// </summary>
    public float[][] ToFloat32Rows()
    {
        var values = ToFloat32();
        int width = shape.Length == 0 ? 1 : checked((int)shape[^1]);
        int rows = width == 0 ? 0 : values.Length / width;
        var result = new float[rows][];
        for (int r = 0; r < rows; r++)
            result[r] = values.AsSpan(r * width, width).ToArray();
        return result;
    }
}
