using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins;

/// <summary>TorchSharp adapters for the one wire codec (<see cref="WireTensor"/>).</summary>
public static class WireTensorTorch
{
    /// <summary>The torch dtype of a wire dtype.</summary>
    public static torch.ScalarType ToScalarType(this DType dtype) => dtype switch
    {
        DType.Float32 => torch.ScalarType.Float32,
        DType.Bfloat16 => torch.ScalarType.BFloat16,
        DType.Float16 => torch.ScalarType.Float16,
        DType.Int64 => torch.ScalarType.Int64,
        _ => throw new ArgumentException($"dtype {dtype} has no torch form", nameof(dtype)),
    };

    /// <summary>The wire dtype of a torch dtype (float32, bfloat16, float16, int64).</summary>
    public static DType ToWireDType(this torch.ScalarType dtype) => dtype switch
    {
        torch.ScalarType.Float32 => DType.Float32,
        torch.ScalarType.BFloat16 => DType.Bfloat16,
        torch.ScalarType.Float16 => DType.Float16,
        torch.ScalarType.Int64 => DType.Int64,
        _ => throw new ArgumentException($"dtype {dtype} has no wire form", nameof(dtype)),
    };

    /// <summary>A new CPU tensor holding a copy of the wire tensor's elements (the caller disposes it).</summary>
    public static torch.Tensor ToTorch(this WireTensor wire)
    {
        ArgumentNullException.ThrowIfNull(wire);
        var t = torch.empty([.. wire.Shape], wire.DType.ToScalarType());
        wire.Data.Span.CopyTo(t.bytes);
        return t;
    }

    /// <summary>A wire tensor holding a copy of a tensor's elements (moved to the CPU and made contiguous first if need be).</summary>
    public static WireTensor ToWireTensor(this torch.Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var dtype = tensor.dtype.ToWireDType();
        using var cpu = tensor.device_type == DeviceType.CPU ? null : tensor.cpu();
        using var dense = (cpu ?? tensor).contiguous();
        return WireTensor.Create(dtype, dense.shape, dense.bytes.ToArray(), "tensor");
    }
}
