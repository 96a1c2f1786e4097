using Google.Protobuf;
using InterpMesh.Runtime;
using InterpMesh.Contracts.V1;
using TorchSharp;
using static TorchSharp.torch;
using WireTensor = InterpMesh.Contracts.V1.Tensor;

namespace InterpMesh.ModelService.Grpc;

/// <summary>Converts between torch tensors and the wire <c>Tensor</c> (raw little-endian bytes).</summary>
internal static class TensorWire
{
    public static DType ToWire(ScalarType t) => t switch
    {
        ScalarType.Float32 => DType.Float32,
        ScalarType.BFloat16 => DType.Bfloat16,
        ScalarType.Float16 => DType.Float16,
        ScalarType.Int64 => DType.Int64,
        _ => throw new ArgumentException($"dtype {t} has no wire form"),
    };

    public static ScalarType FromWire(DType t, string what) => t switch
    {
        DType.Float32 => ScalarType.Float32,
        DType.Bfloat16 => ScalarType.BFloat16,
        DType.Float16 => ScalarType.Float16,
        DType.Int64 => ScalarType.Int64,
        _ => throw new InvalidRequestException($"{what}: dtype must be FLOAT32, BFLOAT16, FLOAT16 or INT64, got {t}"),
    };

    /// <summary>Largest byte count a wire tensor can describe (a gRPC message is far smaller).</summary>
    private const long MaxBytes = int.MaxValue;

    /// <summary>Most dimensions a wire tensor may have.</summary>
    public const int MaxRank = 8;

    private static int Size(ScalarType t) => t switch
    {
        ScalarType.Float32 => 4,
        ScalarType.Int64 => 8,
        _ => 2,
    };

    /// <summary>Builds a tensor from the wire, checking shape, byte count and (for floats) finiteness.</summary>
    public static torch.Tensor FromWire(WireTensor w, string what)
    {
        var dtype = FromWire(w.Dtype, what);
        // libtorch refuses more than 64 dimensions with a native error (reported as INTERNAL); no
        // activation has more than a handful.
        if (w.Shape.Count > MaxRank)
            throw new InvalidRequestException($"{what}: shape has {w.Shape.Count} dimensions; at most {MaxRank} are accepted");
        long count = 1;
        foreach (var d in w.Shape)
        {
            if (d < 0)
                throw new InvalidRequestException($"{what}: shape [{string.Join(", ", w.Shape)}] has a negative dimension");
            // Overflow-safe: a shape whose byte count passes what a message can carry is refused by name.
            if (d != 0 && count > MaxBytes / Size(dtype) / d)
                throw new InvalidRequestException($"{what}: shape [{string.Join(", ", w.Shape.Take(MaxRank))}] holds more bytes than a message can carry; send a smaller tensor");
            count *= d;
        }
        long expected = count * Size(dtype);
        if (w.Data.Length != expected)
            throw new InvalidRequestException($"{what}: shape [{string.Join(", ", w.Shape)}] of {w.Dtype} needs {expected} bytes, got {w.Data.Length}");
        var t = empty(w.Shape.ToArray(), dtype);
        w.Data.Span.CopyTo(t.bytes);
        if (dtype != ScalarType.Int64 && !t.isfinite().all().item<bool>())
            throw new InvalidRequestException($"{what}: contains NaN or infinite values");
        return t;
    }
}
