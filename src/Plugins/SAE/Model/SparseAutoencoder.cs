using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.SAE.Model;

/// <summary>
/// A sparse autoencoder (or transcoder) as SAELens 6 defines it. Input processing: the run-time
/// normalisation (<c>constant_norm_rescale</c>: x·√d_in/‖x‖; <c>layer_norm</c>: (x − μ)/(σ + 1e-5),
/// σ the unbiased standard deviation), then x − b_dec when <see cref="ApplyBDecToInput"/>.
/// Activations: <c>standard</c> ReLU(pre); <c>topk</c> the k largest pre-activations (× ‖W_dec[j]‖
/// when <see cref="RescaleActsByDecoderNorm"/>), ReLU; <c>jumprelu</c> ReLU(pre)·[pre &gt; threshold];
/// <c>gated</c> [x W_enc + b_gate &gt; 0]·ReLU(x (W_enc ∘ exp r_mag) + b_mag). Output: f W_dec + b_dec
/// (f / ‖W_dec[j]‖ first for rescaled TopK), the normalisation undone; transcoders decode to
/// d_out, skip transcoders add x W_skipᵀ. Weights are float32 leaf tensors (detached from any dispose
/// scope); the trainer sets requires_grad on W_enc, b_enc, W_dec, b_dec.
/// </summary>
internal sealed class SparseAutoencoder : IDisposable
{
    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar Zero = 0;
    private static readonly Scalar MinNorm = 1e-8;
    private static readonly Scalar LayerNormEps = 1e-5;

    /// <summary>Architectures this class computes (SAELens names).</summary>
    public static readonly string[] Architectures = ["standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder"];

    /// <summary>Run-time normalisations this class computes (SAELens names).</summary>
    public static readonly string[] RuntimeNormalizations = ["none", "constant_norm_rescale", "layer_norm"];

    public SparseAutoencoder(string architecture, int dIn, int dSae, int k, Tensor wEnc, Tensor bEnc, Tensor wDec, Tensor bDec, bool applyBDecToInput = true, SaeExtras? extras = null)
    {
        if (!Architectures.Contains(architecture))
            throw new InvalidParametersException($"architecture '{architecture}' is not supported; use one of {string.Join(", ", Architectures)}");
        if (architecture == "topk" && (k < 1 || k > dSae))
            throw new InvalidParametersException($"k = {k} must be between 1 and d_sae = {dSae}");
        extras ??= new SaeExtras();
        if (!RuntimeNormalizations.Contains(extras.RuntimeNormalization))
            throw new InvalidParametersException($"normalize_activations '{extras.RuntimeNormalization}' is not applied at run time; use one of {string.Join(", ", RuntimeNormalizations)}");
        if (architecture is "jumprelu" or "jumprelu_transcoder" && extras.Threshold is null)
            throw new InvalidParametersException($"a {architecture} SAE needs threshold");
        if (architecture == "gated" && (extras.RMag is null || extras.BMag is null))
            throw new InvalidParametersException("a gated SAE needs r_mag and b_mag");
        if (architecture == "skip_transcoder" && extras.WSkip is null)
            throw new InvalidParametersException("a skip_transcoder needs W_skip");
        Architecture = architecture;
        DIn = dIn;
        DSae = dSae;
        DOut = (int)wDec.shape[1];
        K = k;
        WEnc = wEnc.DetachFromDisposeScope();
        BEnc = bEnc.DetachFromDisposeScope();
        WDec = wDec.DetachFromDisposeScope();
        BDec = bDec.DetachFromDisposeScope();
        Threshold = extras.Threshold?.DetachFromDisposeScope();
        RMag = extras.RMag?.DetachFromDisposeScope();
        BMag = extras.BMag?.DetachFromDisposeScope();
        WSkip = extras.WSkip?.DetachFromDisposeScope();
        ApplyBDecToInput = applyBDecToInput && !IsTranscoder;
        RuntimeNormalization = extras.RuntimeNormalization;
        RescaleActsByDecoderNorm = extras.RescaleActsByDecoderNorm;
    }

    public string Architecture { get; }
    public int DIn { get; }
    public int DSae { get; }

    /// <summary>The output width: d_in, or a transcoder's d_out.</summary>
    public int DOut { get; }
    public int K { get; }
    public bool ApplyBDecToInput { get; }

    /// <summary>none, constant_norm_rescale or layer_norm (applied to each input and undone on the output).</summary>
    public string RuntimeNormalization { get; }
    public bool RescaleActsByDecoderNorm { get; }
    public Tensor WEnc { get; }

    /// <summary>The encoder bias (b_gate, the gating path's bias, for gated SAEs).</summary>
    public Tensor BEnc { get; }
    public Tensor WDec { get; }
    public Tensor BDec { get; }
    public Tensor? Threshold { get; }
    public Tensor? RMag { get; }
    public Tensor? BMag { get; }
    public Tensor? WSkip { get; }

    public bool IsTranscoder => Architecture.EndsWith("transcoder", StringComparison.Ordinal);

    /// <summary>The tensors the trainer updates (standard and topk).</summary>
    public IEnumerable<Tensor> Parameters => [WEnc, BEnc, WDec, BDec];

    private IEnumerable<Tensor> All => new[] { WEnc, BEnc, WDec, BDec, Threshold, RMag, BMag, WSkip }.OfType<Tensor>();

    /// <summary>A fresh SAE: W_dec rows random unit vectors, W_enc = W_dec^T (the usual initialisation), zero biases.</summary>
    public static SparseAutoencoder Create(string architecture, int dIn, int dSae, int k, long seed)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator((ulong)seed);
        var dec = randn([dSae, dIn], generator: generator);
        dec /= dec.norm(1, keepdim: true);
        return new SparseAutoencoder(architecture, dIn, dSae, k, dec.t().contiguous().clone(), zeros(dSae), dec.clone(), zeros(dIn));
    }

    /// <summary>The training pre-activations of a standard or TopK SAE (no run-time normalisation).</summary>
    public Tensor PreActivations(Tensor x) => (ApplyBDecToInput ? x - BDec : x).matmul(WEnc).add(BEnc, One);

    /// <summary>The activations for pre-activations of a standard or TopK SAE.</summary>
    public Tensor Activate(Tensor pre)
    {
        if (Architecture == "standard")
            return nn.functional.relu(pre);
        var (values, indices) = pre.topk(K, -1);
        return zeros_like(pre).scatter(-1, indices, nn.functional.relu(values));
    }

    /// <summary>f W_dec + b_dec (without the normalisation, the TopK decoder-norm rescaling and the skip path: see <see cref="Forward"/>).</summary>
    public Tensor Decode(Tensor f) => f.matmul(WDec).add(BDec, One);

    /// <summary>The feature activations of inputs [..., d_in].</summary>
    public Tensor Encode(Tensor x) => Forward(x, decode: false).Features;

    /// <summary>The feature activations and the reconstruction (or a transcoder's output) of inputs [..., d_in].</summary>
    public (Tensor Features, Tensor Output) Forward(Tensor x) => Forward(x, decode: true);

    private (Tensor Features, Tensor Output) Forward(Tensor x, bool decode)
    {
        var input = x;
        Tensor? coefficient = null, mu = null, std = null;
        if (RuntimeNormalization == "constant_norm_rescale")
        {
            using Scalar root = Math.Sqrt(DIn);
            coefficient = x.norm(-1, keepdim: true).reciprocal().mul(root);
            input = x * coefficient;
        }
        else if (RuntimeNormalization == "layer_norm")
        {
            mu = x.mean([-1L], keepdim: true);
            var centred = x - mu;
            std = centred.std(-1, unbiased: true, keepdim: true);
            input = centred / std.add(LayerNormEps);
        }
        var sae = ApplyBDecToInput ? input - BDec : input;
        Tensor f;
        switch (Architecture)
        {
            case "gated":
            {
                var gate = sae.matmul(WEnc).add(BEnc, One).gt(Zero).to(sae.dtype);
                var magnitude = sae.matmul(WEnc * RMag!.exp()).add(BMag!, One);
                f = gate * nn.functional.relu(magnitude);
                break;
            }
            case "topk":
            {
                var pre = sae.matmul(WEnc).add(BEnc, One);
                if (RescaleActsByDecoderNorm)
                    pre = pre * WDec.norm(1);
                var (values, indices) = pre.topk(K, -1);
                f = zeros_like(pre).scatter(-1, indices, nn.functional.relu(values));
                break;
            }
            default:
            {
                var pre = sae.matmul(WEnc).add(BEnc, One);
                f = nn.functional.relu(pre);
                if (Threshold is not null)
                    f = f * pre.gt(Threshold).to(f.dtype);
                break;
            }
        }
        if (!decode)
            return (f, null!);
        var decoded = RescaleActsByDecoderNorm ? f / WDec.norm(1) : f;
        var output = decoded.matmul(WDec).add(BDec, One);
        if (coefficient is not null)
            output = output / coefficient;
        if (std is not null)
            output = output * std + mu!;
        if (WSkip is not null)
            output = output.add(x.matmul(WSkip.t()), One);
        return (f, output);
    }

    /// <summary>
    /// Folds an input scale s (the SAE was trained on x·s) into the weights: W_enc·s, W_dec/s,
    /// b_dec/s, as SAELens' <c>fold_activation_norm_scaling_factor</c>; the pre-activations, and so
    /// the features, are unchanged, and the output is in the unscaled space.
    /// </summary>
    public void FoldInputScale(double s)
    {
        using var _ = no_grad();
        using Scalar factor = s;
        WEnc.mul_(factor);
        WDec.div_(factor);
        BDec.div_(factor);
    }

    /// <summary>Scales decoder rows to unit norm.</summary>
    public void NormalizeDecoder()
    {
        using var _ = no_grad();
        WDec.div_(WDec.norm(1, keepdim: true).clamp_min(MinNorm));
    }

    public void Dispose()
    {
        foreach (var t in All)
            t.Dispose();
    }
}

/// <summary>The tensors and options beyond W_enc, b_enc, W_dec, b_dec that some architectures have.</summary>
internal sealed record SaeExtras
{
    /// <summary>JumpReLU threshold [d_sae].</summary>
    public Tensor? Threshold { get; init; }

    /// <summary>Gated: the magnitude path's log-scale [d_sae].</summary>
    public Tensor? RMag { get; init; }

    /// <summary>Gated: the magnitude path's bias [d_sae].</summary>
    public Tensor? BMag { get; init; }

    /// <summary>Skip transcoder: [d_out, d_in].</summary>
    public Tensor? WSkip { get; init; }

    public string RuntimeNormalization { get; init; } = "none";

    public bool RescaleActsByDecoderNorm { get; init; }
}
