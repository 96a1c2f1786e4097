using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.SAE.Model;

/// <summary>
/// A sparse autoencoder as SAELens defines it: f = act((x − b_dec) W_enc + b_enc) (the b_dec
/// subtraction when <see cref="ApplyBDecToInput"/>), x̂ = f W_dec + b_dec. Activation: ReLU
/// ("standard") or TopK (keep the k largest pre-activations, then ReLU). Weights are float32 leaf
/// tensors (detached from any dispose scope); the trainer sets requires_grad on them.
/// </summary>
internal sealed class SparseAutoencoder : IDisposable
{
    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar MinNorm = 1e-8;

    public SparseAutoencoder(string architecture, int dIn, int dSae, int k, Tensor wEnc, Tensor bEnc, Tensor wDec, Tensor bDec, bool applyBDecToInput = true)
    {
        if (architecture is not ("standard" or "topk"))
            throw new InvalidParametersException($"architecture '{architecture}' is not supported; use standard or topk");
        if (architecture == "topk" && (k < 1 || k > dSae))
            throw new InvalidParametersException($"k = {k} must be between 1 and d_sae = {dSae}");
        Architecture = architecture;
        DIn = dIn;
        DSae = dSae;
        K = k;
        WEnc = wEnc.DetachFromDisposeScope();
        BEnc = bEnc.DetachFromDisposeScope();
        WDec = wDec.DetachFromDisposeScope();
        BDec = bDec.DetachFromDisposeScope();
        ApplyBDecToInput = applyBDecToInput;
    }

    public string Architecture { get; }
    public int DIn { get; }
    public int DSae { get; }
    public int K { get; }
    public bool ApplyBDecToInput { get; }
    public Tensor WEnc { get; }
    public Tensor BEnc { get; }
    public Tensor WDec { get; }
    public Tensor BDec { get; }

    public IEnumerable<Tensor> Parameters => [WEnc, BEnc, WDec, BDec];

    /// <summary>A fresh SAE: W_dec rows random unit vectors, W_enc = W_dec^T (the usual initialisation), zero biases.</summary>
    public static SparseAutoencoder Create(string architecture, int dIn, int dSae, int k, long seed)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator((ulong)seed);
        var dec = randn([dSae, dIn], generator: generator);
        dec /= dec.norm(1, keepdim: true);
        return new SparseAutoencoder(architecture, dIn, dSae, k, dec.t().contiguous().clone(), zeros(dSae), dec.clone(), zeros(dIn));
    }

    public Tensor PreActivations(Tensor x) => (ApplyBDecToInput ? x - BDec : x).matmul(WEnc).add(BEnc, One);

    public Tensor Encode(Tensor x) => Activate(PreActivations(x));

    public Tensor Activate(Tensor pre)
    {
        if (Architecture == "standard")
            return nn.functional.relu(pre);
        var (values, indices) = pre.topk(K, -1);
        return zeros_like(pre).scatter(-1, indices, nn.functional.relu(values));
    }

    public Tensor Decode(Tensor f) => f.matmul(WDec).add(BDec, One);

    /// <summary>Scales decoder rows to unit norm.</summary>
    public void NormalizeDecoder()
    {
        using var _ = no_grad();
        WDec.div_(WDec.norm(1, keepdim: true).clamp_min(MinNorm));
    }

    public void Dispose()
    {
        foreach (var t in Parameters)
            t.Dispose();
    }
}
