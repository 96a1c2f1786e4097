using InterpMesh.Plugins.SAE.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.SAE.Training;

/// <summary>Training settings (defaults follow SAELens / the TopK paper where they name one).</summary>
internal sealed record TrainingOptions(
    double LearningRate = 1e-3,
    int WarmupSteps = 50,
    int TotalSteps = 1000,
    double L1Coefficient = 5.0,
    int AuxK = 0,
    double AuxCoefficient = 1.0 / 32,
    int DeadAfterSteps = 200);

/// <summary>What one step measured.</summary>
internal sealed record StepMetrics(int Step, double Loss, double L0, double ExplainedVariance, double DeadFraction);

/// <summary>
/// Trains an SAE with Adam (β 0.9/0.999, written out so its state can be checkpointed), linear
/// warm-up then cosine decay to 10%, decoder rows renormalised to unit length after every step.
/// Standard: loss = ‖x̂ − x‖² + λ Σ_j f_j ‖W_dec[j]‖ (mean over the batch). TopK: loss = ‖x̂ − x‖² / Var(x)
/// + α·AuxK, where AuxK reconstructs the residual x − x̂ from the top-k_aux latents among those dead
/// for <c>DeadAfterSteps</c> steps.
/// </summary>
internal sealed class SaeTrainer(SparseAutoencoder sae, TrainingOptions options)
{
    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar Zero = 0;
    private static readonly Scalar Two = 2;
    private static readonly Scalar Tiny = 1e-12;
    private static readonly Scalar NegativeInfinity = float.NegativeInfinity;
    private static readonly Scalar Beta1 = 0.9;
    private static readonly Scalar OneMinusBeta1 = 0.1;
    private static readonly Scalar Beta2 = 0.999;
    private static readonly Scalar OneMinusBeta2 = 0.001;
    private static readonly Scalar Epsilon = 1e-8;

    private readonly Tensor[] m = [.. sae.Parameters.Select(p => zeros_like(p).DetachFromDisposeScope())];
    private readonly Tensor[] v = [.. sae.Parameters.Select(p => zeros_like(p).DetachFromDisposeScope())];
    private readonly long[] lastFired = new long[sae.DSae];
    private readonly Tensor fireCounts = zeros(sae.DSae, dtype: ScalarType.Int64).DetachFromDisposeScope();
    public int Step { get; private set; }

    /// <summary>How many training tokens each latent fired on since <see cref="ResetFireCounts"/> (SAELens' act_freq_scores).</summary>
    public Tensor FireCounts => fireCounts;

    /// <summary>Tokens counted in <see cref="FireCounts"/>.</summary>
    public long CountedTokens { get; private set; }

    /// <summary>Starts a new window for <see cref="FireCounts"/>.</summary>
    public void ResetFireCounts()
    {
        fireCounts.zero_();
        CountedTokens = 0;
    }

    /// <summary>log10(frequency + 1e-10) of each latent over the window, as SAELens' <c>sparsity.safetensors</c> holds it.</summary>
    public float[] LogFeatureSparsity()
    {
        using var scope = NewDisposeScope();
        using Scalar eps = 1e-10;
        using Scalar tokens = Math.Max(1L, CountedTokens);
        return fireCounts.to_type(ScalarType.Float64).div(tokens).add(eps).log10().to_type(ScalarType.Float32).data<float>().ToArray();
    }
    public IReadOnlyList<Tensor> AdamM => m;
    public IReadOnlyList<Tensor> AdamV => v;
    public long[] LastFired => lastFired;

    /// <summary>Restores a checkpoint's optimiser state and step.</summary>
    public void Restore(int step, IReadOnlyList<Tensor> adamM, IReadOnlyList<Tensor> adamV, long[] fired)
    {
        Step = step;
        for (int i = 0; i < m.Length; i++)
        {
            m[i].copy_(adamM[i]);
            v[i].copy_(adamV[i]);
        }
        Array.Copy(fired, lastFired, lastFired.Length);
    }

    /// <summary>b_dec at the data mean (the geometric median is the reference's option; the mean is its common stand-in).</summary>
    public void InitializeDecoderBias(Tensor sample)
    {
        using var _ = no_grad();
        sae.BDec.copy_(sample.mean([0]));
    }

    private double Rate()
    {
        if (Step < options.WarmupSteps)
            return options.LearningRate * (Step + 1) / options.WarmupSteps;
        double progress = Math.Min(1, (Step - options.WarmupSteps) / (double)Math.Max(1, options.TotalSteps - options.WarmupSteps));
        return options.LearningRate * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }

    public StepMetrics Train(Tensor x)
    {
        using var scope = NewDisposeScope();
        foreach (var p in sae.Parameters)
            p.requires_grad_(true);
        var pre = sae.PreActivations(x);
        var f = sae.Activate(pre);
        var xHat = sae.Decode(f);
        var error = xHat - x;
        var mse = error.pow(Two).sum(1).mean();
        var variance = (x - x.mean([0])).pow(Two).sum(1).mean().clamp_min(Tiny);
        Tensor loss;
        var active = f.gt(Zero);
        fireCounts.add_(active.sum([0L], type: ScalarType.Int64));
        CountedTokens += x.shape[0];
        var fired = active.any(0);
        var firedIdx = fired.nonzero().reshape(-1).data<long>().ToArray();
        foreach (var j in firedIdx)
            lastFired[j] = Step;
        if (sae.Architecture == "standard")
        {
            using Scalar l1 = options.L1Coefficient;
            loss = mse.add((f * sae.WDec.norm(1)).sum(1).mean().mul(l1), One);
        }
        else
        {
            loss = mse / variance;
            var dead = tensor(lastFired.Select(s => Step - s >= options.DeadAfterSteps).ToArray());
            int deadCount = (int)dead.sum().item<long>();
            if (options.AuxK > 0 && deadCount > 0)
            {
                int kAux = Math.Min(options.AuxK, deadCount);
                var masked = pre.masked_fill(dead.logical_not().unsqueeze(0), NegativeInfinity);
                var (vals, idx) = masked.topk(kAux, -1);
                var aux = zeros_like(pre).scatter(-1, idx, nn.functional.relu(vals));
                var residual = (x - xHat).detach();
                var auxMse = (aux.matmul(sae.WDec) - residual).pow(Two).sum(1).mean() / (residual - residual.mean([0])).pow(Two).sum(1).mean().clamp_min(Tiny);
                using Scalar auxCoefficient = options.AuxCoefficient;
                loss = loss.add(auxMse.nan_to_num(0).mul(auxCoefficient), One);
            }
        }
        loss.backward();
        double lr = Rate();
        using (no_grad())
        {
            int i = 0;
            int t = Step + 1;
            // p -= lr · m̂ / (√v̂ + ε) with m̂ = m / (1 − β1^t), v̂ = v / (1 − β2^t), written in place as
            // p += (−lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε): the same update in five passes over
            // each parameter instead of twelve (the step's largest cost after the matmuls).
            double correction1 = 1 - Math.Pow(0.9, t), correction2 = 1 - Math.Pow(0.999, t);
            using Scalar stepSize = -lr / correction1, sqrtCorrection2 = Math.Sqrt(correction2);
            foreach (var p in sae.Parameters)
            {
                var g = p.grad!;
                m[i].mul_(Beta1).add_(g, alpha: OneMinusBeta1);
                v[i].mul_(Beta2).addcmul_(g, g, OneMinusBeta2);
                using (var denominator = v[i].sqrt().div_(sqrtCorrection2).add_(Epsilon, One))
                    p.addcdiv_(m[i], denominator, stepSize);
                p.grad = null;
                i++;
            }
        }
        foreach (var p in sae.Parameters)
            p.requires_grad_(false);
        sae.NormalizeDecoder();
        Step++;
        double ev = 1 - mse.item<float>() / variance.item<float>();
        double l0 = active.sum(1).to(ScalarType.Float32).mean().item<float>();
        double deadFraction = lastFired.Count(s => Step - 1 - s >= options.DeadAfterSteps) / (double)lastFired.Length;
        return new StepMetrics(Step, loss.item<float>(), l0, ev, deadFraction);
    }
}
