using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.RetrievalHeads.Detection;

/// <summary>
/// TransformerLens' head detector: for a head's attention pattern A [q, k] on a prompt and a
/// detection pattern D, score = Σ(A ⊙ D) / Σ A, averaged over prompts ("mul" error measure).
/// Detection patterns as TransformerLens builds them: previous-token D[i, i−1] = 1;
/// duplicate-token D[i, j] = 1 when tok_i = tok_j, j &lt; i; induction D[i, j] = duplicate[i, j−1]
/// for j ≥ 1, lower triangle (the token after an earlier copy). Options: exclude the BOS column,
/// exclude the current token (diagonal), both applied to A before scoring.
/// </summary>
internal static class HeadDetector
{
    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar Tiny = 1e-12;

    public static readonly string[] Kinds = ["previous_token", "duplicate_token", "induction"];

    public static Tensor Pattern(string kind, long[] tokens)
    {
        int n = tokens.Length;
        var d = zeros(n, n);
        switch (kind)
        {
            case "previous_token":
                for (int i = 1; i < n; i++)
                    d[i, i - 1] = 1;
                break;
            case "duplicate_token":
            case "induction":
                var dup = new float[n, n];
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < i; j++)
                        dup[i, j] = tokens[i] == tokens[j] ? 1 : 0;
                for (int i = 0; i < n; i++)
                    for (int j = 0; j <= i; j++)
                    {
                        float v = kind == "duplicate_token" ? dup[i, j] : j >= 1 ? dup[i, j - 1] : 0;
                        if (v != 0)
                            d[i, j] = v;
                    }
                break;
            default:
                throw new InvalidParametersException($"unknown detector '{kind}'; use {string.Join(", ", Kinds)}");
        }
        return d;
    }

    /// <summary>
    /// Summed scores [head] of one layer's patterns [batch, head, q, k] on the prompts' tokens (the
    /// caller divides by the number of prompts): TransformerLens' "mul" (Σ(A⊙D)/ΣA, exclusions
    /// applied to A) or "abs" (1 − round(mean|A − D| · n, 3), exclusions applied to |A − D|).
    /// </summary>
    public static double[] Sum(Tensor patterns, IReadOnlyList<long[]> tokens, string kind, bool excludeBos, bool excludeCurrent, DetectorMeasure measure)
    {
        if (measure == DetectorMeasure.Mul)
        {
            var mean = Score(patterns, tokens, kind, excludeBos, excludeCurrent);
            return [.. mean.Select(v => v * tokens.Count)];
        }
        using var scope = NewDisposeScope();
        var a = patterns.to(ScalarType.Float64);
        int heads = (int)a.shape[1], t = (int)a.shape[2];
        var sums = new double[heads];
        for (int b = 0; b < tokens.Count; b++)
        {
            var diff = (a[b] - Pattern(kind, tokens[b]).to(ScalarType.Float64).unsqueeze(0)).abs();
            if (excludeBos)
                diff[.., .., 0] = 0;
            if (excludeCurrent)
                diff = diff * eye(t, dtype: ScalarType.Float64).logical_not().unsqueeze(0);
            var means = diff.mean([1, 2]).data<double>().ToArray();
            for (int h = 0; h < heads; h++)
                sums[h] += 1 - Math.Round(means[h] * t, 3, MidpointRounding.ToEven);
        }
        return sums;
    }

    /// <summary>Mean "mul" scores [head] of one layer's patterns [batch, head, q, k] on the prompts' tokens.</summary>
    public static double[] Score(Tensor patterns, IReadOnlyList<long[]> tokens, string kind, bool excludeBos, bool excludeCurrent)
    {
        using var scope = NewDisposeScope();
        var a = patterns.to(ScalarType.Float32).clone();
        int t = (int)a.shape[2];
        if (excludeBos)
            a[.., .., .., 0] = 0;
        if (excludeCurrent)
            a = a * eye(t).logical_not().unsqueeze(0).unsqueeze(0);
        var scores = zeros(a.shape[1]);
        for (int b = 0; b < tokens.Count; b++)
        {
            var d = Pattern(kind, tokens[b]);
            var ab = a[b];
            scores = scores.add((ab * d).sum([1, 2]) / ab.sum([1, 2]).clamp_min(Tiny), One);
        }
        using Scalar prompts = tokens.Count;
        return scores.div(prompts).data<float>().ToArray().Select(v => (double)v).ToArray();
    }
}
