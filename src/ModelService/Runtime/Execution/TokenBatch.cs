using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>Where padding goes when rows of different lengths share a batch.</summary>
public enum PaddingSide { Left, Right }

/// <summary>Builds padded <c>[batch, pos]</c> id and mask tensors from rows of token ids.</summary>
public static class TokenBatch
{
    /// <summary>Pads rows to one length with id 0; the mask marks real tokens.</summary>
    public static (Tensor Ids, Tensor Mask) Pad(IReadOnlyList<IReadOnlyList<int>> rows, PaddingSide side, Device? device = null)
    {
        if (rows.Count == 0)
            throw new ArgumentException("the batch is empty; give at least one input");
        int length = rows.Max(r => r.Count);
        if (rows.Any(r => r.Count == 0))
            throw new ArgumentException("an input has no tokens; every input needs at least one token");
        var ids = new long[rows.Count * length];
        var mask = new bool[rows.Count * length];
        for (int i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            int start = side == PaddingSide.Left ? length - row.Count : 0;
            for (int j = 0; j < row.Count; j++)
            {
                ids[i * length + start + j] = row[j];
                mask[i * length + start + j] = true;
            }
        }
        return (tensor(ids, [rows.Count, length], device: device), tensor(mask, [rows.Count, length], device: device));
    }
}
