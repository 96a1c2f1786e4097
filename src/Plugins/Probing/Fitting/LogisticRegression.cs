using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// Binary logistic regression on standardised features, in float64.
/// <para>L2 (<see cref="FitL2"/>): minimises mean log-loss + ‖w‖²/(2·C·n) — exactly scikit-learn's
/// <c>LogisticRegression(C)</c> objective (C·Σloss + ½‖w‖², bias unpenalised) divided by C·n — with
/// L-BFGS (10 pairs, Armijo backtracking). Converged when the largest gradient component is
/// below 1e-7 (or the line search stalls), at most 1000 iterations.</para>
/// <para>L1 (<see cref="FitL1"/>): mean log-loss + ‖w‖₁/(C·n) by FISTA with a step from the
/// Lipschitz bound, 500 iterations; used to rank neurons.</para>
/// </summary>
internal static class LogisticRegression
{
    public const int MaxIterations = 1000;

    /// <summary>Fits w, b. <paramref name="x"/> is [n, d] float64, <paramref name="y"/> is [n] float64 of 0/1.</summary>
    public static (Tensor Weight, double Bias, int Iterations) FitL2(Tensor x, Tensor y, double c)
    {
        long n = x.shape[0], d = x.shape[1];
        double lambda = 1.0 / (c * n);
        // θ = [w; b]; start from the log-odds of the base rate.
        double rate = Math.Clamp(y.mean().item<double>(), 1e-6, 1 - 1e-6);
        var theta = zeros(d + 1, ScalarType.Float64);
        theta[d] = Math.Log(rate / (1 - rate));

        (double F, Tensor G) Evaluate(Tensor t)
        {
            using var scope = NewDisposeScope();
            var w = t[..(int)d];
            var z = x.matmul(w) + t[d];
            var f = (nn.functional.softplus(z) - y * z).mean().item<double>() + 0.5 * lambda * w.dot(w).item<double>();
            var r = (z.sigmoid() - y) / n;
            var g = cat([x.t().matmul(r) + lambda * w, r.sum().unsqueeze(0)]);
            return (f, g.MoveToOuterDisposeScope());
        }

        var (fx, gx) = Evaluate(theta);
        var s = new List<Tensor>();
        var yv = new List<Tensor>();
        var rho = new List<double>();
        int iteration = 0;
        for (; iteration < MaxIterations; iteration++)
        {
            if (gx.abs().max().item<double>() < 1e-7)
                break;
            // Two-loop recursion for the direction.
            var q = gx.clone();
            var alpha = new double[s.Count];
            for (int i = s.Count - 1; i >= 0; i--)
            {
                alpha[i] = rho[i] * s[i].dot(q).item<double>();
                q.sub_(yv[i] * alpha[i]);
            }
            if (s.Count > 0)
                q.mul_(s[^1].dot(yv[^1]).item<double>() / yv[^1].dot(yv[^1]).item<double>());
            for (int i = 0; i < s.Count; i++)
            {
                double beta = rho[i] * yv[i].dot(q).item<double>();
                q.add_(s[i] * (alpha[i] - beta));
            }
            var direction = -q;
            double slope = gx.dot(direction).item<double>();
            if (slope >= 0)
            {
                direction = -gx;
                slope = -gx.dot(gx).item<double>();
                s.Clear();
                yv.Clear();
                rho.Clear();
            }
            double step = iteration == 0 ? Math.Min(1.0, 1.0 / Math.Max(1e-12, gx.abs().sum().item<double>())) : 1.0;
            Tensor next;
            double fn;
            Tensor gn;
            while (true)
            {
                next = theta + direction * step;
                (fn, gn) = Evaluate(next);
                if (fn <= fx + 1e-4 * step * slope || step < 1e-20)
                    break;
                step *= 0.5;
            }
            var sk = next - theta;
            var yk = gn - gx;
            double sy = sk.dot(yk).item<double>();
            if (sy > 1e-18)
            {
                s.Add(sk);
                yv.Add(yk);
                rho.Add(1.0 / sy);
                if (s.Count > 10)
                {
                    s.RemoveAt(0);
                    yv.RemoveAt(0);
                    rho.RemoveAt(0);
                }
            }
            // Stalled: the line search could not decrease the objective any more.
            bool stalled = fx - fn <= 1e-16 * Math.Max(1.0, Math.Abs(fx)) && step < 1e-10;
            theta = next;
            fx = fn;
            gx = gn;
            if (stalled)
                break;
        }
        return (theta[..(int)d].clone(), theta[d].item<double>(), iteration);
    }

    /// <summary>L1-penalised fit by FISTA; returns the weights (for ranking).</summary>
    public static Tensor FitL1(Tensor x, Tensor y, double c, int iterations = 500)
    {
        long n = x.shape[0], d = x.shape[1];
        double alpha = 1.0 / (c * n);
        // Lipschitz constant of the mean log-loss gradient: σ_max(X)²/(4n) (+1/(4) for the bias).
        var v = ones(d, ScalarType.Float64) / Math.Sqrt(d);
        for (int i = 0; i < 30; i++)
        {
            var u = x.t().matmul(x.matmul(v));
            v = u / u.norm().clamp_min(1e-30);
        }
        double sigma2 = x.matmul(v).dot(x.matmul(v)).item<double>();
        double lipschitz = (sigma2 + n) / (4.0 * n);
        double step = 1.0 / lipschitz;
        var w = zeros(d, ScalarType.Float64);
        double b = 0;
        var wPrev = w.clone();
        double bPrev = 0, t = 1;
        for (int k = 0; k < iterations; k++)
        {
            double tNext = (1 + Math.Sqrt(1 + 4 * t * t)) / 2;
            double mom = (t - 1) / tNext;
            var wy = w + (w - wPrev) * mom;
            double by = b + (b - bPrev) * mom;
            var r = ((x.matmul(wy) + by).sigmoid() - y) / n;
            var gw = x.t().matmul(r);
            double gb = r.sum().item<double>();
            wPrev = w;
            bPrev = b;
            var moved = wy - gw * step;
            w = moved.sign() * (moved.abs() - step * alpha).clamp_min(0);
            b = by - step * gb;
            t = tNext;
        }
        return w;
    }

    public static Tensor Probability(Tensor x, Tensor weight, double bias) => (x.matmul(weight) + bias).sigmoid();
}
