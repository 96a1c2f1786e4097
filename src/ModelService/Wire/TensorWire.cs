using InterpMesh.Contracts.Tensors;
using InterpMesh.Plugins;
using InterpMesh.Runtime;
using static TorchSharp.torch;
using ProtoTensor = InterpMesh.Contracts.V1.Tensor;

namespace InterpMesh.ModelService.Wire;

/// <summary>Requests' wire tensors to torch: the contracts' codec, then the service's own rule (finite floats).</summary>
internal static class TensorWire
{
    /// <summary>Most dimensions a wire tensor may have.</summary>
    public const int MaxRank = WireTensor.MaxRank;

    /// <summary>Builds a tensor from the wire, checking shape, byte count and (for floats) finiteness.</summary>
    public static Tensor FromWire(ProtoTensor w, string what)
    {
        if (!WireTensor.TryFromProto(w, what, out var wire, out var error))
            throw new InvalidRequestException(error);
        var t = wire.ToTorch();
        if (t.dtype != ScalarType.Int64 && !t.isfinite().all().item<bool>())
        {
            t.Dispose();
            throw new InvalidRequestException($"{what}: contains NaN or infinite values");
        }
        return t;
    }
}
