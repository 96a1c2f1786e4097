namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// A linear support-vector classifier as scikit-learn's <c>LinearSVC</c> (liblinear) fits it:
/// min ½‖w̃‖² + C·Σ loss(yᵢ·w̃·x̃ᵢ) with x̃ = [x, 1] (intercept_scaling 1, so the bias is penalised
/// too), loss the hinge max(0, 1 − m) or the squared hinge max(0, 1 − m)², yᵢ ∈ {−1, +1}. Solved
/// in the dual by coordinate descent (Hsieh et al. 2008, liblinear's <c>solve_l2r_l1l2_svc</c>
/// without shrinking), stopping when the projected gradient's spread falls below
/// <c>tolerance</c>. The primal optimum is unique, so the order of the coordinates (seeded here,
/// liblinear's own generator there) changes only how fast it is reached.
/// </summary>
internal static class LinearSvm
{
    /// <summary>Weights (without the bias) and the bias, for labels <paramref name="positive"/> = +1, others −1.</summary>
    public static (double[] Weight, double Bias, int Epochs) Fit(float[][] rows, bool[] positive, double c, bool squaredHinge,
        double tolerance = 1e-5, int maxEpochs = 5000, int seed = 0)
    {
        int n = rows.Length, d = rows[0].Length;
        double diag = squaredHinge ? 0.5 / c : 0;
        double upper = squaredHinge ? double.PositiveInfinity : c;
        var qd = new double[n];
        for (int i = 0; i < n; i++)
        {
            double s = 1; // the intercept's feature
            foreach (var v in rows[i])
                s += (double)v * v;
            qd[i] = s + diag;
        }
        var w = new double[d + 1];
        var alpha = new double[n];
        var order = Enumerable.Range(0, n).ToArray();
        var rng = new Random(seed);
        int epoch = 0;
        for (; epoch < maxEpochs; epoch++)
        {
            rng.Shuffle(order);
            double pgMax = double.NegativeInfinity, pgMin = double.PositiveInfinity;
            foreach (int i in order)
            {
                var row = rows[i];
                double y = positive[i] ? 1 : -1;
                double m = w[d];
                for (int j = 0; j < d; j++)
                    m += w[j] * row[j];
                double g = y * m - 1 + diag * alpha[i];
                double pg = alpha[i] == 0 ? Math.Min(g, 0) : alpha[i] >= upper ? Math.Max(g, 0) : g;
                pgMax = Math.Max(pgMax, pg);
                pgMin = Math.Min(pgMin, pg);
                if (Math.Abs(pg) > 1e-12)
                {
                    double old = alpha[i];
                    alpha[i] = Math.Min(Math.Max(old - g / qd[i], 0), upper);
                    double step = (alpha[i] - old) * y;
                    for (int j = 0; j < d; j++)
                        w[j] += step * row[j];
                    w[d] += step;
                }
            }
            if (pgMax - pgMin <= tolerance)
                break;
        }
        return (w[..d], w[d], epoch);
    }
}
