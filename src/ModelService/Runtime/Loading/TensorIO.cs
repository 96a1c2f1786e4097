using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>Moves raw tensor bytes between streams and tensor memory without intermediate copies.</summary>
internal static class TensorIO
{
    // Span<byte> is limited to 2 GiB; larger tensors move in slices of whole elements.
    private const long ChunkBytes = 1L << 28;

    /// <summary>
    /// Loading reads a stored tensor in slices of at most this many bytes (one mapped view and, when
    /// converting, one staging buffer of this size): the bound on what loading holds beyond the
    /// weights themselves.
    /// </summary>
    public const long SliceBytes = 16L << 20;

    /// <summary>Fills a contiguous CPU tensor from the stream's next bytes.</summary>
    public static void ReadInto(Stream stream, Tensor t)
    {
        using var flat = t.view(-1);
        long perChunk = Math.Max(1, ChunkBytes / t.ElementSize);
        long n = flat.numel();
        for (long done = 0; done < n; done += perChunk)
        {
            using var part = flat.narrow(0, done, Math.Min(perChunk, n - done));
            stream.ReadExactly(part.bytes);
        }
    }

    /// <summary>Writes a tensor's bytes (made contiguous on the CPU first) to the stream.</summary>
    public static void WriteFrom(Stream stream, Tensor t)
    {
        using var c = t.detach().cpu().contiguous();
        using var flat = c.view(-1);
        long perChunk = Math.Max(1, ChunkBytes / c.ElementSize);
        long n = flat.numel();
        for (long done = 0; done < n; done += perChunk)
        {
            using var part = flat.narrow(0, done, Math.Min(perChunk, n - done));
            stream.Write(part.bytes);
        }
    }
}
