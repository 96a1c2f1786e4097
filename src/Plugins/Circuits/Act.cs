using InterpMesh.Contracts.Tensors;
using TorchSharp;

namespace InterpMesh.Plugins.Circuits;

/// <summary>A small float32 array with a shape: captured activations and the values sent back as interventions.</summary>
internal sealed class Act(float[] data, long[] shape)
{
    public float[] Data { get; } = data;

    public long[] Shape { get; } = shape;

    /// <summary>A copy of a tensor (any dtype; the caller keeps and disposes it).</summary>
    public static Act Of(torch.Tensor t)
    {
        using var f = t.to(torch.ScalarType.Float32);
        using var c = f.contiguous();
        return new Act(c.data<float>().ToArray(), [.. t.shape]);
    }

    /// <summary>Index <paramref name="index"/> of dimension <paramref name="dim"/>, kept as a dimension of size 1 or dropped.</summary>
    public Act Select(int dim, long index, bool keep = false)
    {
        long outer = 1, inner = 1;
        for (int i = 0; i < dim; i++)
            outer *= Shape[i];
        for (int i = dim + 1; i < Shape.Length; i++)
            inner *= Shape[i];
        long size = Shape[dim];
        var result = new float[outer * inner];
        for (long o = 0; o < outer; o++)
            Array.Copy(Data, (o * size + index) * inner, result, o * inner, inner);
        var shape = Shape.ToList();
        if (keep)
            shape[dim] = 1;
        else
            shape.RemoveAt(dim);
        return new Act(result, [.. shape]);
    }

    /// <summary>The first <paramref name="count"/> entries of dimension 0.</summary>
    public Act Head(long count)
    {
        long inner = Data.Length / Math.Max(1, Shape[0]);
        return new Act(Data[..(int)(count * inner)], [count, .. Shape[1..]]);
    }

    public Contracts.V1.Tensor ToProto() => WireTensor.FromFloat32(Data, Shape).ToProto();

    public static Act operator -(Act a, Act b) => new([.. a.Data.Zip(b.Data, (x, y) => x - y)], a.Shape);

    public static Act operator +(Act a, Act b) => new([.. a.Data.Zip(b.Data, (x, y) => x + y)], a.Shape);

    public double Dot(Act other)
    {
        double s = 0;
        for (int i = 0; i < Data.Length; i++)
            s += (double)Data[i] * other.Data[i];
        return s;
    }
}
