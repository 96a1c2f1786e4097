using System.Buffers.Binary;
using InterpMesh.Runtime.Architectures;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>
/// Loads a llama2.c checkpoint (the legacy "version 0" <c>.bin</c> that run.c reads): a 7-int32
/// header, then float32 arrays. q/k rows are permuted from llama2.c's adjacent-pair RoPE to the
/// rotate_half order the runtime uses, so both conventions share one forward.
/// </summary>
public static class Llama2cCheckpoint
{
    private const int HeaderBytes = 7 * 4;

    public static (ModelConfig Config, TransformerWeights Weights) Load(string path, ScalarType dtype)
    {
        using var stream = OpenRead(path);
        long fileLength = stream.Length;
        if (fileLength < HeaderBytes)
            throw new ModelFormatException(path, $"not a llama2.c checkpoint: {fileLength} bytes is shorter than the 28-byte header");
        Span<byte> header = stackalloc byte[HeaderBytes];
        stream.ReadExactly(header);
        if (BinaryPrimitives.ReadUInt32LittleEndian(header) == 0x616b3432)
            throw new ModelFormatException(path, "this is a llama2.c version 1/2 export (magic \"ak42\"); only the legacy version 0 format that run.c reads is supported (export with --version 0)");
        int[] h = new int[7];
        for (int i = 0; i < 7; i++)
            h[i] = BinaryPrimitives.ReadInt32LittleEndian(header[(i * 4)..]);
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocabSigned = h[5], seqLen = h[6];
        bool shared = vocabSigned > 0;
        // Math.Abs(int.MinValue) overflows; no vocabulary is that large, so refuse it as non-positive.
        int vocab = vocabSigned == int.MinValue ? 0 : Math.Abs(vocabSigned);
        if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || vocab <= 0 || seqLen <= 0)
            throw new ModelFormatException(path, $"not a llama2.c checkpoint: header [dim {dim}, hidden_dim {hidden}, n_layers {layers}, n_heads {heads}, n_kv_heads {kvHeads}, vocab_size {vocabSigned}, seq_len {seqLen}] has non-positive fields");
        if (dim % heads != 0 || heads % kvHeads != 0 || (dim / heads) % 2 != 0)
            throw new ModelFormatException(path, $"inconsistent header: dim {dim} must be a multiple of n_heads {heads} with an even head size, and n_heads a multiple of n_kv_heads {kvHeads}");
        int headSize = dim / heads;
        long kvDim = (long)kvHeads * headSize;
        long expected;
        try
        {
            // Fields near int.MaxValue make the product overflow a long; wrapped, it could even match
            // the file length by chance. Checked arithmetic turns that into a refusal.
            long floats = checked((long)vocab * dim
                + (long)layers * (dim + (long)dim * dim + 2 * kvDim * dim + (long)dim * dim + dim + 3L * hidden * dim)
                + dim + (long)seqLen * headSize + (shared ? 0 : (long)vocab * dim));
            expected = checked(HeaderBytes + floats * 4);
        }
        catch (OverflowException)
        {
            throw new ModelFormatException(path, $"the header [dim {dim}, hidden_dim {hidden}, n_layers {layers}, n_heads {heads}, n_kv_heads {kvHeads}, vocab_size {vocabSigned}, seq_len {seqLen}] describes more than 2^63 bytes; the file is not a llama2.c checkpoint or is corrupt");
        }
        if (fileLength < expected)
            throw new ModelFormatException(path, $"truncated: the header describes {expected} bytes but the file has {fileLength}");
        if (fileLength > expected)
            throw new ModelFormatException(path, $"the header describes {expected} bytes but the file has {fileLength}; this is not a version 0 llama2.c checkpoint with this header");

        var config = new ModelConfig
        {
            Architecture = "llama2.c",
            ModelType = "llama",
            NLayers = layers,
            DModel = dim,
            NHeads = heads,
            NKvHeads = kvHeads,
            DHead = headSize,
            DMlp = hidden,
            VocabSize = vocab,
            ContextLength = seqLen,
            Norm = NormKind.RmsNorm,
            NormEps = 1e-5,
            Positional = PositionalKind.Rotary,
            RopeTheta = 10000.0,
            RotaryDim = headSize,
            Mlp = MlpKind.SwiGlu,
            TiedEmbeddings = shared,
            BosTokenId = 1,
            EosTokenIds = [2],
        };
        config.Validate(path);

        Tensor Next(params long[] shape)
        {
            var t = empty(shape, ScalarType.Float32);
            TensorIO.ReadInto(stream, t);
            if (dtype == ScalarType.Float32)
                return t;
            var c = t.to(dtype);
            t.Dispose();
            return c;
        }

        var embed = Next(vocab, dim);
        var rmsAtt = Next(layers, dim);
        var wq = Next(layers, dim, dim);
        var wk = Next(layers, kvDim, dim);
        var wv = Next(layers, kvDim, dim);
        var wo = Next(layers, dim, dim);
        var rmsFfn = Next(layers, dim);
        var w1 = Next(layers, hidden, dim);
        var w2 = Next(layers, dim, hidden);
        var w3 = Next(layers, hidden, dim);
        var rmsFinal = Next(dim);
        stream.Seek((long)seqLen * headSize * 4, SeekOrigin.Current); // legacy RoPE tables: recomputed
        var wcls = shared ? embed : Next(vocab, dim);

        var blocks = new List<BlockWeights>();
        for (int l = 0; l < layers; l++)
        {
            // Dispose the per-layer views at once: a live view keeps the stacked tensor's memory.
            using var q = wq[l];
            using var k = wk[l];
            using var v = wv[l];
            using var qr = ToRotateHalf(q, heads, headSize);
            using var kr = ToRotateHalf(k, kvHeads, headSize);
            using var o = wo[l];
            using var a1 = rmsAtt[l];
            using var a2 = rmsFfn[l];
            using var gate = w1[l];
            using var up = w3[l];
            using var down = w2[l];
            blocks.Add(new BlockWeights
            {
                Ln1Weight = a1.clone(),
                Qkv = cat([qr, kr, v], 0),
                Out = o.clone(),
                Ln2Weight = a2.clone(),
                MlpIn = cat([gate, up], 0),
                MlpOut = down.clone(),
            });
        }
        foreach (var t in new[] { rmsAtt, wq, wk, wv, wo, rmsFfn, w1, w2, w3 })
            t.Dispose();
        var weights = TransformerWeights.FromCheckpointLayout(new TransformerWeights { Embed = embed, Blocks = blocks, LnFinalWeight = rmsFinal, Unembed = wcls });
        weights.Validate(config, path);
        return (config, weights);
    }

    /// <summary>Adjacent-pair RoPE rows (2i, 2i+1) → rotate_half rows (i, i + d/2), per head.</summary>
    internal static Tensor ToRotateHalf(Tensor w, int heads, int headSize)
    {
        long inDim = w.shape[1];
        return w.view(heads, headSize / 2, 2, inDim).transpose(1, 2).reshape(heads * headSize, inDim);
    }

    private static FileStream OpenRead(string path)
    {
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot open the checkpoint ({e.Message})", e);
        }
    }
}
