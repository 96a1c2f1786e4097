using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// Binary logistic regression, in float64 sums over float32 features.
/// <para>L2 (<see cref="FitL2(float[], int, int, double[], double, double[], double, int, double[])"/>):
/// minimises (1/n)·Σ sᵢ·logloss(i) + ‖w‖²/(2·C·n) — exactly scikit-learn 1.2's
/// <c>LogisticRegression(C, class_weight, lbfgs)</c> objective Σ sᵢ·logloss(i) + ½‖w‖²/C (bias
/// unpenalised, sᵢ the class weights) divided by n — with L-BFGS (10 pairs, Armijo backtracking).
/// Stops where scikit-learn's <c>scipy.optimize.minimize(L-BFGS-B, gtol=tol)</c> stops: the largest
/// gradient component of scikit-learn's objective at most <c>tol</c> (default 1e-4, its default), or a
/// relative decrease (f_k − f_k+1)/max(|f_k|, |f_k+1|, 1) of at most scipy's default ftol
/// (2.2e-9), or <c>maxIterations</c>.</para>
/// <para>L1 (<see cref="FitL1"/>): mean log-loss + ‖w‖₁/(C·n) by FISTA with a step from the
/// Lipschitz bound, 500 iterations; used to rank neurons.</para>
/// </summary>
internal static class LogisticRegression
{
    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar Zero = 0;
    private static readonly Scalar TinyNorm = 1e-30;

    public const int MaxIterations = 1000;

    /// <summary>Matrices with at least this many entries are evaluated on all cores.</summary>
    public const long ParallelEntries = 1L << 18;

    /// <summary>The chunks a shared pass is cut into (both threads claim them one at a time).</summary>
    public const int PartnerChunks = 8;

    /// <summary>scikit-learn's default <c>tol</c> for <c>LogisticRegression</c>.</summary>
    public const double DefaultTolerance = 1e-4;

    /// <summary>scipy's default L-BFGS-B <c>ftol</c> (factr 1e7 × machine epsilon), which scikit-learn 1.2 leaves in place.</summary>
    public const double ScipyFtol = 1e7 * 2.220446049250313e-16;

    /// <summary>Fits w, b. <paramref name="x"/> is [n, d] float64, <paramref name="y"/> is [n] float64 of 0/1.</summary>
    public static (Tensor Weight, double Bias, int Iterations) FitL2(Tensor x, Tensor y, double c)
    {
        var (w, b, iterations) = FitL2(x.to(ScalarType.Float32).contiguous().data<float>().ToArray(), (int)x.shape[0], (int)x.shape[1], y.data<double>().ToArray(), c);
        return (tensor(w, ScalarType.Float64), b, iterations);
    }

    /// <summary>
    /// Fits on a row-major [n, d] matrix; no torch involved, so no torch thread pool spins beside
    /// the solver's own threads. <paramref name="sampleWeights"/> are per-row loss weights (null: 1);
    /// <paramref name="init"/> is a starting point [w; b] (a warm start), or null for the base rate.
    /// </summary>
    /// <remarks>One evaluation is one SIMD pass over the rows (logit, loss and gradient share
    /// the read of each row), split over the cores; the L-BFGS bookkeeping runs on plain arrays.</remarks>
    public static (double[] Weight, double Bias, int Iterations) FitL2(float[] xs, int n, int d, double[] ys, double c,
        double[]? sampleWeights = null, double tolerance = DefaultTolerance, int maxIterations = MaxIterations, double[]? init = null)
    {
        double lambda = 1.0 / (c * n);
        var sw = sampleWeights;
        double weightSum = sw?.Sum() ?? n;
        double rate = Math.Clamp((sw is null ? ys.Sum() : ys.Select((v, i) => v * sw[i]).Sum()) / weightSum, 1e-6, 1 - 1e-6);
        // θ = [w; b], starting from the log-odds of the (weighted) base rate, or the warm start.
        var theta = new double[d + 1];
        if (init is not null)
            Array.Copy(init, theta, d + 1);
        else
            theta[d] = Math.Log(rate / (1 - rate));
        // A pass over a small matrix takes a fraction of a millisecond: from 256 Ki entries it is cut
        // into chunks that this thread and a partner that stays awake between passes share
        // (PassPartner); below, a second thread costs more than it saves.
        int parts = (long)n * d < ParallelEntries || Environment.ProcessorCount < 2 || n < 64 ? 1 : PartnerChunks;
        using var partner = parts > 1 ? new PassPartner(parts) : null;
        // Per worker (this thread, the partner) and chunk: its gradient share and its loss.
        int workers = partner is null ? 1 : 2;
        var partial = new double[workers][][];
        var losses = new double[workers][];
        for (int w = 0; w < workers; w++)
        {
            partial[w] = new double[parts][];
            for (int part = 0; part < parts; part++)
                partial[w][part] = new double[d + 1];
            losses[w] = new double[parts];
        }
        var single = new int[parts];

        // Loss and gradient in one pass over X: each row is read once, for its logit and for its
        // share of the gradient (the pass is memory-bound, so a second pass would double the cost).
        (double F, double[] G) Evaluate(double[] t)
        {
            int[] winners = single;
            if (partner is null)
                Part(t, 0, 0);
            else
                winners = partner.Run((part, worker) => Part(t, part, worker));
            // Summed in chunk order whichever worker computed each chunk: the same sums every time.
            var total = new double[d + 1];
            double lossSum = 0;
            for (int part = 0; part < parts; part++)
            {
                var g = partial[winners[part]][part];
                for (int j = 0; j <= d; j++)
                    total[j] += g[j];
                lossSum += losses[winners[part]][part];
            }
            double ww = 0;
            for (int j = 0; j < d; j++)
            {
                ww += t[j] * t[j];
                total[j] = total[j] / n + lambda * t[j];
            }
            total[d] /= n;
            return (lossSum / n + 0.5 * lambda * ww, total);
        }

        // One part's rows, computed by one worker: its loss into losses[worker][part], its gradient into partial[worker][part].
        void Part(double[] t, int part, int worker)
        {
            {
                var g = partial[worker][part];
                Array.Clear(g);
                double loss = 0;
                int from = (int)((long)n * part / parts), to = (int)((long)n * (part + 1) / parts);
                var w = t.AsSpan(0, d);
                // Four rows at a time: their logits share the reads of w, their gradient shares
                // share one read and write of g (the inner loops are otherwise load/store-bound).
                var r = new double[4];
                int i = from;
                for (; i + 4 <= to; i += 4)
                {
                    Dot4(xs.AsSpan(i * d, 4 * d), w, d, r);
                    for (int k = 0; k < 4; k++)
                    {
                        loss += Row(t[d] + r[k], i + k, out double rk);
                        r[k] = rk;
                    }
                    Axpy4(r, xs.AsSpan(i * d, 4 * d), g.AsSpan(0, d));
                    g[d] += r[0] + r[1] + r[2] + r[3];
                }
                for (; i < to; i++)
                {
                    var row = xs.AsSpan(i * d, d);
                    loss += Row(Dot(row, w) + t[d], i, out double ri);
                    Axpy(ri, row, g.AsSpan(0, d));
                    g[d] += ri;
                }
                losses[worker][part] = loss;
            }
        }

        // Row i's weighted loss softplus(z) − y·z (stably) and its residual s·(σ(z) − y), from one exponential.
        double Row(double z, int i, out double residual)
        {
            double s = sw?[i] ?? 1.0;
            double e = Math.Exp(-Math.Abs(z));
            double sigma = z >= 0 ? 1 / (1 + e) : e / (1 + e);
            residual = s * (sigma - ys[i]);
            return s * ((z > 0 ? z : 0) + Math.Log(1 + e) - ys[i] * z);
        }

        static void Dot4(ReadOnlySpan<float> rows, ReadOnlySpan<double> w, int d, double[] result)
        {
            int vectors = d / System.Numerics.Vector<float>.Count;
            var vw = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(w);
            var a0 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(0, d));
            var a1 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(d, d));
            var a2 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(2 * d, d));
            var a3 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(3 * d, d));
            System.Numerics.Vector<double> s0 = default, s1 = default, s2 = default, s3 = default;
            for (int v = 0; v < vectors; v++)
            {
                var wlo = vw[2 * v];
                var whi = vw[2 * v + 1];
                System.Numerics.Vector.Widen(a0[v], out var lo, out var hi);
                s0 = System.Numerics.Vector.FusedMultiplyAdd(hi, whi, System.Numerics.Vector.FusedMultiplyAdd(lo, wlo, s0));
                System.Numerics.Vector.Widen(a1[v], out lo, out hi);
                s1 = System.Numerics.Vector.FusedMultiplyAdd(hi, whi, System.Numerics.Vector.FusedMultiplyAdd(lo, wlo, s1));
                System.Numerics.Vector.Widen(a2[v], out lo, out hi);
                s2 = System.Numerics.Vector.FusedMultiplyAdd(hi, whi, System.Numerics.Vector.FusedMultiplyAdd(lo, wlo, s2));
                System.Numerics.Vector.Widen(a3[v], out lo, out hi);
                s3 = System.Numerics.Vector.FusedMultiplyAdd(hi, whi, System.Numerics.Vector.FusedMultiplyAdd(lo, wlo, s3));
            }
            double r0 = System.Numerics.Vector.Sum(s0), r1 = System.Numerics.Vector.Sum(s1), r2 = System.Numerics.Vector.Sum(s2), r3 = System.Numerics.Vector.Sum(s3);
            for (int j = vectors * System.Numerics.Vector<float>.Count; j < d; j++)
            {
                r0 += rows[j] * w[j];
                r1 += rows[d + j] * w[j];
                r2 += rows[2 * d + j] * w[j];
                r3 += rows[3 * d + j] * w[j];
            }
            result[0] = r0;
            result[1] = r1;
            result[2] = r2;
            result[3] = r3;
        }

        static void Axpy4(double[] alpha, ReadOnlySpan<float> rows, Span<double> y)
        {
            int d = y.Length, vectors = d / System.Numerics.Vector<float>.Count;
            var vy = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(y);
            var a0 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(0, d));
            var a1 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(d, d));
            var a2 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(2 * d, d));
            var a3 = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(rows.Slice(3 * d, d));
            var c0 = new System.Numerics.Vector<double>(alpha[0]);
            var c1 = new System.Numerics.Vector<double>(alpha[1]);
            var c2 = new System.Numerics.Vector<double>(alpha[2]);
            var c3 = new System.Numerics.Vector<double>(alpha[3]);
            for (int v = 0; v < vectors; v++)
            {
                var lo = vy[2 * v];
                var hi = vy[2 * v + 1];
                System.Numerics.Vector.Widen(a0[v], out var l, out var h);
                lo = System.Numerics.Vector.FusedMultiplyAdd(c0, l, lo);
                hi = System.Numerics.Vector.FusedMultiplyAdd(c0, h, hi);
                System.Numerics.Vector.Widen(a1[v], out l, out h);
                lo = System.Numerics.Vector.FusedMultiplyAdd(c1, l, lo);
                hi = System.Numerics.Vector.FusedMultiplyAdd(c1, h, hi);
                System.Numerics.Vector.Widen(a2[v], out l, out h);
                lo = System.Numerics.Vector.FusedMultiplyAdd(c2, l, lo);
                hi = System.Numerics.Vector.FusedMultiplyAdd(c2, h, hi);
                System.Numerics.Vector.Widen(a3[v], out l, out h);
                lo = System.Numerics.Vector.FusedMultiplyAdd(c3, l, lo);
                hi = System.Numerics.Vector.FusedMultiplyAdd(c3, h, hi);
                vy[2 * v] = lo;
                vy[2 * v + 1] = hi;
            }
            for (int j = vectors * System.Numerics.Vector<float>.Count; j < d; j++)
                y[j] += alpha[0] * rows[j] + alpha[1] * rows[d + j] + alpha[2] * rows[2 * d + j] + alpha[3] * rows[3 * d + j];
        }

        static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<double> b)
        {
            var va = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(a);
            var vb = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(b);
            var acc = System.Numerics.Vector<double>.Zero;
            for (int i = 0; i < va.Length; i++)
            {
                System.Numerics.Vector.Widen(va[i], out var lo, out var hi);
                acc += lo * vb[2 * i] + hi * vb[2 * i + 1];
            }
            double s = System.Numerics.Vector.Sum(acc);
            for (int i = va.Length * System.Numerics.Vector<float>.Count; i < a.Length; i++)
                s += a[i] * b[i];
            return s;
        }

        static void Axpy(double alpha, ReadOnlySpan<float> x, Span<double> y)
        {
            var vx = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(x);
            var vy = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(y);
            var va = new System.Numerics.Vector<double>(alpha);
            for (int i = 0; i < vx.Length; i++)
            {
                System.Numerics.Vector.Widen(vx[i], out var lo, out var hi);
                vy[2 * i] += va * lo;
                vy[2 * i + 1] += va * hi;
            }
            for (int i = vx.Length * System.Numerics.Vector<float>.Count; i < x.Length; i++)
                y[i] += alpha * x[i];
        }

        static double DotAll(double[] a, double[] b)
        {
            double s = 0;
            for (int i = 0; i < a.Length; i++)
                s += a[i] * b[i];
            return s;
        }

        var (fx, gx) = Evaluate(theta);
        var sHistory = new List<double[]>();
        var yHistory = new List<double[]>();
        var rho = new List<double>();
        int iteration = 0;
        // scikit-learn's objective is n times this one: its gradient test max|g| ≤ tol is max|g|·n ≤ tol here.
        double gradientTolerance = tolerance / n;
        for (; iteration < maxIterations; iteration++)
        {
            if (gx.Max(Math.Abs) <= gradientTolerance)
                break;
            // Two-loop recursion for the direction.
            var q = (double[])gx.Clone();
            var alpha = new double[sHistory.Count];
            for (int i = sHistory.Count - 1; i >= 0; i--)
            {
                alpha[i] = rho[i] * DotAll(sHistory[i], q);
                for (int j = 0; j <= d; j++)
                    q[j] -= alpha[i] * yHistory[i][j];
            }
            if (sHistory.Count > 0)
            {
                double scale = DotAll(sHistory[^1], yHistory[^1]) / DotAll(yHistory[^1], yHistory[^1]);
                for (int j = 0; j <= d; j++)
                    q[j] *= scale;
            }
            for (int i = 0; i < sHistory.Count; i++)
            {
                double beta = rho[i] * DotAll(yHistory[i], q);
                for (int j = 0; j <= d; j++)
                    q[j] += sHistory[i][j] * (alpha[i] - beta);
            }
            for (int j = 0; j <= d; j++)
                q[j] = -q[j];
            double slope = DotAll(gx, q);
            if (slope >= 0)
            {
                q = [.. gx.Select(v => -v)];
                slope = -DotAll(gx, gx);
                sHistory.Clear();
                yHistory.Clear();
                rho.Clear();
            }
            double step = sHistory.Count == 0 ? Math.Min(1.0, 1.0 / Math.Max(1e-12, gx.Sum(Math.Abs))) : 1.0;
            double[] next;
            double fn;
            double[] gn;
            while (true)
            {
                next = new double[d + 1];
                for (int j = 0; j <= d; j++)
                    next[j] = theta[j] + step * q[j];
                (fn, gn) = Evaluate(next);
                if (fn <= fx + 1e-4 * step * slope || step < 1e-20)
                    break;
                step *= 0.5;
            }
            var sk = new double[d + 1];
            var yk = new double[d + 1];
            for (int j = 0; j <= d; j++)
            {
                sk[j] = next[j] - theta[j];
                yk[j] = gn[j] - gx[j];
            }
            double sy = DotAll(sk, yk);
            if (sy > 1e-18)
            {
                sHistory.Add(sk);
                yHistory.Add(yk);
                rho.Add(1.0 / sy);
                if (sHistory.Count > 10)
                {
                    sHistory.RemoveAt(0);
                    yHistory.RemoveAt(0);
                    rho.RemoveAt(0);
                }
            }
            // Converged in value (scipy's L-BFGS-B test with its default ftol, as scikit-learn 1.2
            // calls it, on scikit-learn's objective, n times this one), or the line search stalled.
            bool stalled = (fx - fn) * n <= ScipyFtol * Math.Max(1.0, n * Math.Max(Math.Abs(fx), Math.Abs(fn)));
            theta = next;
            fx = fn;
            gx = gn;
            if (stalled)
                break;
        }
        return (theta.AsSpan(0, d).ToArray(), theta[d], iteration);
    }

    /// <summary>
    /// L1-penalised fit by FISTA of (1/n)·Σ sᵢ·logloss(i) + ‖w‖₁/(C·n) (<paramref name="weights"/> sᵢ,
    /// null: 1); returns the weights (for ranking).
    /// </summary>
    public static Tensor FitL1(Tensor x, Tensor y, double c, Tensor? weights = null, int iterations = 500)
    {
        long n = x.shape[0], d = x.shape[1];
        double alpha = 1.0 / (c * n);
        // Lipschitz constant of the mean log-loss gradient: σ_max(X)²/(4n) (+1/(4) for the bias).
        using Scalar rootD = Math.Sqrt(d), rows = n;
        var v = ones(d, ScalarType.Float64).div(rootD);
        for (int i = 0; i < 30; i++)
        {
            var u = x.t().matmul(x.matmul(v));
            v = u / u.norm().clamp_min(TinyNorm);
        }
        double sigma2 = x.matmul(v).dot(x.matmul(v)).item<double>();
        double maxWeight = weights is null ? 1 : weights.max().item<double>();
        double lipschitz = maxWeight * (sigma2 + n) / (4.0 * n);
        double step = 1.0 / lipschitz;
        var w = zeros(d, ScalarType.Float64);
        double b = 0;
        var wPrev = w.clone();
        double bPrev = 0, t = 1;
        for (int k = 0; k < iterations; k++)
        {
            double tNext = (1 + Math.Sqrt(1 + 4 * t * t)) / 2;
            double mom = (t - 1) / tNext;
            double by = b + (b - bPrev) * mom;
            using Scalar momentum = mom, byScalar = by, stepScalar = step, shrink = step * alpha;
            var wy = w.add((w - wPrev).mul(momentum), One);
            var r = (x.matmul(wy).add(byScalar, One).sigmoid() - y).div(rows);
            if (weights is not null)
                r = r.mul(weights);
            var gw = x.t().matmul(r);
            double gb = r.sum().item<double>();
            wPrev = w;
            bPrev = b;
            var moved = wy - gw.mul(stepScalar);
            w = moved.sign() * moved.abs().sub(shrink).clamp_min(Zero);
            b = by - step * gb;
            t = tNext;
        }
        return w;
    }

    public static Tensor Probability(Tensor x, Tensor weight, double bias)
    {
        using Scalar b = bias;
        return x.matmul(weight).add(b, One).sigmoid();
    }
}
