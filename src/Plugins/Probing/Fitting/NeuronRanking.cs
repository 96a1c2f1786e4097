using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// Ranks neurons for k-sparse probes on the training split (standardised activations):
/// <c>mean_diff</c> |μ₊ − μ₋| (multi-class: the largest |μ_c − μ_rest|), <c>anova_f</c> one-way
/// ANOVA F, <c>l1</c> |w| of an L1 logistic regression with C = 0.1 and balanced class weights
/// (summed over one-vs-rest classes), <c>svm</c> |w| of a linear SVM (hinge loss, L2, C = 1, bias
/// penalised: scikit-learn's <c>LinearSVC(loss='hinge')</c> as Gurnee et al. call it; summed over
/// one-vs-rest classes), <c>mutual_info</c> mutual information between the neuron (10 quantile
/// bins) and the label, <c>random</c> a seeded shuffle (the baseline).
/// </summary>
internal static class NeuronRanking
{
    public static readonly string[] Methods = ["mean_diff", "anova_f", "l1", "svm", "mutual_info", "random"];

    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar Two = 2;
    private static readonly Scalar MinStd = 1e-8;
    private static readonly Scalar Tiny = 1e-12;

    /// <summary>Score per neuron (higher = more informative).</summary>
    public static double[] Score(string method, float[][] rows, int[] labels, int classes, int seed)
    {
        using var scope = NewDisposeScope();
        var x = Probe.Matrix(rows, null);
        var z = (x - x.mean([0])) / x.std([0], unbiased: false).clamp_min(MinStd);
        int d = (int)x.shape[1];
        switch (method)
        {
            case "mean_diff":
            {
                var best = zeros(d, ScalarType.Float64);
                foreach (int c in classes == 2 ? [1] : Enumerable.Range(0, classes))
                {
                    var isC = tensor(labels.Select(l => l == c).ToArray());
                    var diff = (z[isC].mean([0]) - z[isC.logical_not()].mean([0])).abs();
                    best = best.maximum(diff);
                }
                return best.data<double>().ToArray();
            }
            case "anova_f":
            {
                int n = labels.Length;
                var grand = z.mean([0]);
                var between = zeros(d, ScalarType.Float64);
                var within = zeros(d, ScalarType.Float64);
                for (int c = 0; c < classes; c++)
                {
                    var group = z[tensor(labels.Select(l => l == c).ToArray())];
                    var mu = group.mean([0]);
                    using Scalar size = group.shape[0];
                    between = between.add((mu - grand).pow(Two).mul(size), One);
                    within = within.add((group - mu).pow(Two).sum([0]), One);
                }
                using Scalar betweenDof = Math.Max(1, classes - 1), withinDof = Math.Max(1, n - classes);
                var f = between.div(betweenDof) / within.div(withinDof).clamp_min(Tiny);
                return f.data<double>().ToArray();
            }
            case "l1":
            {
                var total = zeros(d, ScalarType.Float64);
                foreach (int c in classes == 2 ? [1] : Enumerable.Range(0, classes))
                {
                    var target = labels.Select(l => l == c ? 1.0 : 0.0).ToArray();
                    var weights = tensor(Probe.BalancedWeights(target), ScalarType.Float64);
                    total = total.add(LogisticRegression.FitL1(z, tensor(target, ScalarType.Float64), 0.1, weights).abs(), One);
                }
                // Neurons the L1 fit zeroed keep their order by mean difference (tiny tie-breaker).
                var tie = Score("mean_diff", rows, labels, classes, seed);
                return [.. total.data<double>().ToArray().Select((v, i) => v + 1e-9 * tie[i])];
            }
            case "svm":
            {
                var flat = z.to(ScalarType.Float32).contiguous().data<float>().ToArray();
                var zRows = Enumerable.Range(0, labels.Length).Select(i => flat.AsSpan(i * d, d).ToArray()).ToArray();
                var total = new double[d];
                foreach (int c in classes == 2 ? [1] : Enumerable.Range(0, classes))
                {
                    var (w, _, _) = LinearSvm.Fit(zRows, [.. labels.Select(l => l == c)], 1.0, squaredHinge: false, seed: seed);
                    for (int j = 0; j < d; j++)
                        total[j] += Math.Abs(w[j]);
                }
                return total;
            }
            case "mutual_info":
                return [.. Enumerable.Range(0, d).Select(j => MutualInformation([.. rows.Select(r => (double)r[j])], labels, classes))];
            case "random":
            {
                var rng = new Random(seed);
                return [.. Enumerable.Range(0, d).Select(_ => rng.NextDouble())];
            }
            default:
                throw new InvalidParametersException($"unknown ranking '{method}'; use {string.Join(", ", Methods)}");
        }
    }

    /// <summary>Neuron indices, best first.</summary>
    public static int[] Rank(double[] scores) => [.. Enumerable.Range(0, scores.Length).OrderByDescending(i => scores[i]).ThenBy(i => i)];

    private static double MutualInformation(double[] values, int[] labels, int classes, int bins = 10)
    {
        int n = values.Length;
        var sorted = values.Order().ToArray();
        var edges = Enumerable.Range(1, bins - 1).Select(b => sorted[(int)((long)b * (n - 1) / bins)]).ToArray();
        var joint = new double[bins, classes];
        for (int i = 0; i < n; i++)
        {
            int b = 0;
            while (b < edges.Length && values[i] > edges[b])
                b++;
            joint[b, labels[i]] += 1.0 / n;
        }
        double mi = 0;
        for (int b = 0; b < bins; b++)
        {
            double pb = 0;
            for (int c = 0; c < classes; c++)
                pb += joint[b, c];
            for (int c = 0; c < classes; c++)
            {
                double pc = labels.Count(l => l == c) / (double)n;
                if (joint[b, c] > 0)
                    mi += joint[b, c] * Math.Log(joint[b, c] / (pb * pc));
            }
        }
        return mi;
    }
}
