using InterpMesh.Contracts.V1;

namespace InterpMesh.Contracts.Tensors;

/// <summary>A capture put back together: the hook it was taken at and its tensor.</summary>
public sealed class AssembledActivation(string hook, WireTensor tensor, bool gradient = false)
{
    public string Hook { get; } = hook;

    public WireTensor Tensor { get; } = tensor;

    /// <summary>True: the tensor is d metric / d activation at <see cref="Hook"/> (a gradient request), not the activation.</summary>
    public bool Gradient { get; } = gradient;
}

/// <summary>
/// Reassembles the <see cref="ActivationChunk"/>s of one Run or Generate stream: the service sends
/// each capture as consecutive chunks (offsets 0, n, 2n … up to <c>total_bytes</c>), one capture at a
/// time. A capture and a gradient of the same hook are different tensors (chunks are keyed on hook
/// and gradient flag). <see cref="Add"/> returns the capture its last chunk completes. A chunk that does not
/// continue the capture in progress, or a capture whose bytes do not fit its shape, throws
/// <see cref="InvalidDataException"/> naming the hook.
/// </summary>
public sealed class ChunkAssembler
{
    private ActivationChunk? head;
    private byte[]? buffer;
    private long filled;

    /// <summary>True while a capture has started and not ended.</summary>
    public bool InProgress => head is not null;

    /// <summary>Adds the next chunk; returns the capture when this chunk ends it, else null.</summary>
    public AssembledActivation? Add(ActivationChunk chunk)
    {
        ArgumentNullException.ThrowIfNull(chunk);
        if (head is not null && (chunk.Hook != head.Hook || chunk.Gradient != head.Gradient || chunk.Offset != filled))
            throw new InvalidDataException($"a chunk of {Kind(chunk)}'{Quote(chunk.Hook)}' at byte {chunk.Offset} arrived while {Kind(head)}'{Quote(head.Hook)}' had {filled} of {head.TotalBytes} bytes");
        if (head is null)
        {
            if (chunk.Offset != 0)
                throw new InvalidDataException($"the first chunk of '{Quote(chunk.Hook)}' starts at byte {chunk.Offset}, not 0");
            if (chunk.TotalBytes < 0 || chunk.TotalBytes > WireTensor.MaxBytes)
                throw new InvalidDataException($"'{Quote(chunk.Hook)}' announces {chunk.TotalBytes} bytes");
            head = chunk;
            buffer = GC.AllocateUninitializedArray<byte>((int)chunk.TotalBytes);
            filled = 0;
        }
        if (filled + chunk.Data.Length > head.TotalBytes)
            throw new InvalidDataException($"chunks of '{Quote(head.Hook)}' carry more than its {head.TotalBytes} bytes");
        chunk.Data.Span.CopyTo(buffer.AsSpan((int)filled));
        filled += chunk.Data.Length;
        if (filled < head.TotalBytes)
            return null;
        var done = new AssembledActivation(head.Hook, WireTensor.Create(head.Dtype, head.Shape, buffer, $"{(head.Gradient ? "gradient" : "capture")} '{Quote(head.Hook)}'"), head.Gradient);
        head = null;
        buffer = null;
        filled = 0;
        return done;
    }

    private static string Kind(ActivationChunk chunk) => chunk.Gradient ? "the gradient of " : "";

    private static string Quote(string s) => s.Length <= 100 ? s : s[..100] + "…";
}
