using InterpMesh.Runtime.Execution;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace InterpMesh.ToyModels.Training;

/// <summary>
/// AdamW (decoupled weight decay, no AMSGrad) with the same operations in the same order as
/// TorchSharp 0.107's <c>optim.AdamW</c>, so a seed still trains the same weights — but with scalars
/// that outlive the native calls reading them. TorchSharp's own step passes implicit scalars
/// (<c>mul_(β₁)</c>, <c>add_(g, alpha: 1 − β₁)</c>, <c>addcmul_(…, value: 1 − β₂)</c>, …) that a
/// collection during a long training run can free while libtorch reads them
/// (docs/torchsharp-on-debian.md, "Implicit scalars").
/// </summary>
internal sealed class AdamW : IDisposable
{
    private readonly IReadOnlyList<Parameter> parameters;
    private readonly Tensor[] expAvg, expAvgSq;
    private readonly double beta1, beta2, weightDecay;
    private readonly Scalar beta1Scalar, oneMinusBeta1, beta2Scalar, oneMinusBeta2, eps;
    private long step;

    public AdamW(IReadOnlyList<Parameter> parameters, double beta1, double beta2, double eps, double weightDecay)
    {
        this.parameters = parameters;
        this.beta1 = beta1;
        this.beta2 = beta2;
        this.weightDecay = weightDecay;
        beta1Scalar = beta1;
        oneMinusBeta1 = 1 - beta1;
        beta2Scalar = beta2;
        oneMinusBeta2 = 1 - beta2;
        this.eps = eps;
        expAvg = [.. parameters.Select(p => zeros_like(p).DetachFromDisposeScope())];
        expAvgSq = [.. parameters.Select(p => zeros_like(p).DetachFromDisposeScope())];
    }

    /// <summary>Zeroes every parameter's gradient (when it has one).</summary>
    public void ZeroGrad()
    {
        foreach (var p in parameters)
        {
            using var grad = p.grad;
            grad?.zero_();
        }
    }

    /// <summary>One update at learning rate <paramref name="lr"/>.</summary>
    public void Step(double lr)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        step++;
        double biasCorrection1 = 1 - Math.Pow(beta1, step);
        double biasCorrection2 = 1 - Math.Pow(beta2, step);
        using Scalar decay = 1 - lr * weightDecay, root = Math.Sqrt(biasCorrection2), stepSize = -(lr / biasCorrection1);
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            var grad = p.grad;
            if (grad is null)
                continue;
            p.mul_(decay);
            expAvg[i].mul_(beta1Scalar).add_(grad, oneMinusBeta1);
            expAvgSq[i].mul_(beta2Scalar).addcmul_(grad, grad, oneMinusBeta2);
            var denom = expAvgSq[i].sqrt().div(root).add_(eps, Scalars.One);
            p.addcdiv_(expAvg[i], denom, stepSize);
        }
    }

    public void Dispose()
    {
        foreach (var t in expAvg.Concat(expAvgSq))
            t.Dispose();
        foreach (var s in new[] { beta1Scalar, oneMinusBeta1, beta2Scalar, oneMinusBeta2, eps })
            s.Dispose();
    }
}
