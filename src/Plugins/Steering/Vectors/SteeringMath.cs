namespace InterpMesh.Plugins.Steering.Vectors;

/// <summary>Steering-vector arithmetic on plain float arrays (vectors are d_model long).</summary>
internal static class SteeringMath
{
    public static float[] MeanDifference(float[][] positive, float[][] negative)
    {
        int d = positive[0].Length;
        var v = new double[d];
        for (int i = 0; i < positive.Length; i++)
            for (int j = 0; j < d; j++)
                v[j] += (positive[i][j] - negative[i][j]) / (double)positive.Length;
        return [.. v.Select(x => (float)x)];
    }

    /// <summary>
    /// First principal component of the paired differences, by power iteration on their second
    /// moment (not centred: the same as PCA over the differences taken in both orders, which is what
    /// repeng's random pair flipping and steering-vectors' PCA aggregator do; centring would discard
    /// the shared direction itself). Scaled to the mean difference's norm, signed to agree with it.
    /// </summary>
    public static float[] PrincipalComponent(float[][] positive, float[][] negative, float[] meanDiff)
    {
        int n = positive.Length, d = positive[0].Length;
        var diffs = new double[n][];
        var mean = meanDiff.Select(x => (double)x).ToArray();
        for (int i = 0; i < n; i++)
            diffs[i] = [.. Enumerable.Range(0, d).Select(j => (double)positive[i][j] - negative[i][j])];
        var v = Enumerable.Range(0, d).Select(j => mean[j] + 1e-3 * ((j * 7919 % 13) - 6)).ToArray();
        for (int it = 0; it < 200; it++)
        {
            var next = new double[d];
            foreach (var x in diffs)
            {
                double dot = 0;
                for (int j = 0; j < d; j++)
                    dot += x[j] * v[j];
                for (int j = 0; j < d; j++)
                    next[j] += dot * x[j];
            }
            double norm = Math.Sqrt(next.Sum(x => x * x));
            if (norm < 1e-20)
                return [.. meanDiff];   // no spread at all: every pair differs the same way
            v = [.. next.Select(x => x / norm)];
        }
        double sign = Math.Sign(v.Zip(mean).Sum(p => p.First * p.Second));
        double scale = Math.Sqrt(mean.Sum(x => x * x)) * (sign == 0 ? 1 : sign);
        return [.. v.Select(x => (float)(x * scale))];
    }

    public static double Cosine(float[] a, float[] b)
    {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            dot += a[i] * b[i];
            na += a[i] * a[i];
            nb += b[i] * b[i];
        }
        return dot / Math.Max(1e-30, Math.Sqrt(na * nb));
    }

    public static double Norm(float[] a) => Math.Sqrt(a.Sum(x => (double)x * x));

    /// <summary>
    /// How well the direction separates the two sides: the gap between the mean projections in
    /// pooled standard deviations, and the accuracy of thresholding the projection at the midpoint.
    /// </summary>
    public static (double Gap, double Accuracy) Separation(float[][] positive, float[][] negative, float[] v)
    {
        double n = Norm(v);
        double[] Project(float[][] xs) => [.. xs.Select(x => x.Zip(v).Sum(p => (double)p.First * p.Second) / Math.Max(1e-30, n))];
        var p = Project(positive);
        var q = Project(negative);
        double mp = p.Average(), mq = q.Average();
        double var = (p.Sum(x => (x - mp) * (x - mp)) + q.Sum(x => (x - mq) * (x - mq))) / Math.Max(1, p.Length + q.Length - 2);
        double mid = (mp + mq) / 2;
        double accuracy = (p.Count(x => x > mid) + q.Count(x => x <= mid)) / (double)(p.Length + q.Length);
        return ((mp - mq) / Math.Max(1e-12, Math.Sqrt(var)), accuracy);
    }
}
