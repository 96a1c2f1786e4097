using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// How a probe is fitted: class weights, feature scaling and the solver's stopping rule.</summary>
/// <param name="Balanced">scikit-learn's <c>class_weight='balanced'</c>: each row weighs n / (2 · count of its
/// class) in the loss (per one-vs-rest problem).</param>
/// <param name="Standardize">z-score the features with the training mean and std (false: fit on the raw activations).</param>
/// <param name="Tolerance">scikit-learn's <c>tol</c> (largest gradient component of its objective).</param>
/// <param name="MaxIterations">L-BFGS iterations at most (scikit-learn's <c>max_iter</c>).</param>
internal sealed record ProbeFitOptions(bool Balanced = false, bool Standardize = true, double Tolerance = LogisticRegression.DefaultTolerance,
    int MaxIterations = LogisticRegression.MaxIterations)
{
    public static readonly ProbeFitOptions Default = new();
}

/// <summary>
/// A trained linear probe: z-score normalisation (training mean and std; or none), then one binary
/// logistic regression (two classes) or one per class, one-vs-rest (more classes; the class with
/// the highest probability wins). Optionally restricted to some neurons (k-sparse probes).
/// Saved as an artifact: <c>weight</c> [k, d], <c>bias</c> [k], <c>mean</c> [d], <c>std</c> [d],
/// optional <c>neurons</c> [d] (F64/I64 safetensors) plus metadata (hook, position rule, classes, C).
/// </summary>
internal sealed class Probe
{
    // Scalars that outlive the calls reading them: TorchSharp 0.107's implicit ones can be freed by
    // their finalizer during the call (docs/torchsharp-on-debian.md, "Implicit scalars").
    private static readonly Scalar One = 1;
    private static readonly Scalar Tiny = 1e-300;

    public required string Hook { get; init; }
    public required string Position { get; init; }
    public required string[] Classes { get; init; }
    public required double[] Mean { get; init; }
    public required double[] Std { get; init; }
    public required double[][] Weights { get; init; }
    public required double[] Bias { get; init; }
    public int[]? Neurons { get; init; }
    public double C { get; init; }
    public bool Balanced { get; init; }

    /// <summary>Iterations the solver took, per one-vs-rest problem (not saved).</summary>
    public int[] Iterations { get; init; } = [];

    /// <summary>scikit-learn's balanced sample weights for 0/1 targets: n / (2 · count of the row's class).</summary>
    public static double[] BalancedWeights(double[] target)
    {
        int n = target.Length, positives = target.Count(t => t == 1);
        double wp = positives == 0 ? 0 : n / (2.0 * positives), wn = positives == n ? 0 : n / (2.0 * (n - positives));
        return [.. target.Select(t => t == 1 ? wp : wn)];
    }

    /// <summary>
    /// Fits on raw activation rows (all neurons, or those in <paramref name="neurons"/>).
    /// <paramref name="warmStart"/>: a probe fitted on the same rows and neurons (another C), whose
    /// weights start the solver.
    /// </summary>
    public static Probe Fit(float[][] rows, int[] labels, string[] classes, double c, string hook, string position, int[]? neurons = null,
        ProbeFitOptions? options = null, Probe? warmStart = null)
    {
        options ??= ProbeFitOptions.Default;
        // Plain arrays throughout: the solver runs its own threads, and torch's would only compete.
        int n = rows.Length, d = neurons?.Length ?? rows[0].Length;
        // The (selected) features as one dense row-major matrix, standardised in place.
        var z = new float[n * d];
        for (int i = 0; i < n; i++)
        {
            var target = z.AsSpan(i * d, d);
            if (neurons is null)
            {
                rows[i].AsSpan(0, d).CopyTo(target);
            }
            else
            {
                var row = rows[i];
                for (int j = 0; j < d; j++)
                    target[j] = row[neurons[j]];
            }
        }
        var (mean, std) = Moments(z, n, d);
        if (!options.Standardize)
        {
            Array.Clear(mean);
            Array.Fill(std, 1.0);
        }
        else
        {
            Standardise(z, n, d, mean, std);
        }
        var weights = new List<double[]>();
        var bias = new List<double>();
        var iterations = new List<int>();
        foreach (var (positive, k) in (classes.Length == 2 ? [1] : Enumerable.Range(0, classes.Length)).Select((p, k) => (p, k)))
        {
            double[] target = [.. labels.Select(l => l == positive ? 1.0 : 0.0)];
            double[]? init = warmStart is { } ws && ws.Weights.Length > k && ws.Weights[k].Length == d ? [.. ws.Weights[k], ws.Bias[k]] : null;
            var (w, b, it) = LogisticRegression.FitL2(z, n, d, target, c, options.Balanced ? BalancedWeights(target) : null, options.Tolerance, options.MaxIterations, init);
            weights.Add(w);
            bias.Add(b);
            iterations.Add(it);
        }
        return new Probe
        {
            Hook = hook, Position = position, Classes = classes, C = c, Neurons = neurons, Balanced = options.Balanced,
            Mean = mean, Std = std, Weights = [.. weights], Bias = [.. bias], Iterations = [.. iterations],
        };
    }

    /// <summary>Column means and population standard deviations (at least 1e-8) of a row-major [n, d] matrix, summed in float64.</summary>
    internal static (double[] Mean, double[] Std) Moments(float[] x, int n, int d)
    {
        var mean = new double[d];
        var std = new double[d];
        var sum = new double[d];
        for (int i = 0; i < n; i++)
            AddWidened(x.AsSpan(i * d, d), sum, null);
        for (int j = 0; j < d; j++)
            mean[j] = sum[j] / n;
        Array.Clear(sum);
        for (int i = 0; i < n; i++)
            AddWidened(x.AsSpan(i * d, d), sum, mean);
        for (int j = 0; j < d; j++)
            std[j] = Math.Max(Math.Sqrt(sum[j] / n), 1e-8);
        return (mean, std);
    }

    /// <summary>sum += row (<paramref name="centre"/> null) or sum += (row − centre)², in float64.</summary>
    private static void AddWidened(ReadOnlySpan<float> row, double[] sum, double[]? centre)
    {
        int width = System.Numerics.Vector<float>.Count, vectors = row.Length / width;
        var vx = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(row);
        var vs = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(sum.AsSpan());
        var vc = centre is null ? default : System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(centre.AsSpan());
        for (int v = 0; v < vectors; v++)
        {
            System.Numerics.Vector.Widen(vx[v], out var lo, out var hi);
            if (centre is null)
            {
                vs[2 * v] += lo;
                vs[2 * v + 1] += hi;
            }
            else
            {
                lo -= vc[2 * v];
                hi -= vc[2 * v + 1];
                vs[2 * v] += lo * lo;
                vs[2 * v + 1] += hi * hi;
            }
        }
        for (int j = vectors * width; j < row.Length; j++)
        {
            double v = row[j] - (centre?[j] ?? 0);
            sum[j] += centre is null ? v : v * v;
        }
    }

    /// <summary>x ← (x − mean) / std in place, computed in float64.</summary>
    private static void Standardise(float[] x, int n, int d, double[] mean, double[] std)
    {
        var inverse = std.Select(v => 1 / v).ToArray();
        int width = System.Numerics.Vector<float>.Count, vectors = d / width;
        var vm = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(mean.AsSpan());
        var vi = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(inverse.AsSpan());
        for (int i = 0; i < n; i++)
        {
            var row = x.AsSpan(i * d, d);
            var vx = System.Runtime.InteropServices.MemoryMarshal.Cast<float, System.Numerics.Vector<float>>(row);
            for (int v = 0; v < vectors; v++)
            {
                System.Numerics.Vector.Widen(vx[v], out var lo, out var hi);
                vx[v] = System.Numerics.Vector.Narrow((lo - vm[2 * v]) * vi[2 * v], (hi - vm[2 * v + 1]) * vi[2 * v + 1]);
            }
            for (int j = vectors * width; j < d; j++)
                row[j] = (float)((row[j] - mean[j]) * inverse[j]);
        }
    }

    internal static Tensor Matrix(float[][] rows, int[]? neurons)
    {
        int d = neurons?.Length ?? rows[0].Length;
        var flat = new float[rows.Length * d];
        for (int i = 0; i < rows.Length; i++)
        {
            if (neurons is null)
                Array.Copy(rows[i], 0, flat, i * d, d);
            else
                for (int j = 0; j < d; j++)
                    flat[i * d + j] = rows[i][neurons[j]];
        }
        return tensor(flat, [rows.Length, d]).to(ScalarType.Float64);
    }

    /// <summary>Class probabilities per row.</summary>
    public double[][] Scores(float[][] rows)
    {
        using var scope = NewDisposeScope();
        var z = (Matrix(rows, Neurons) - tensor(Mean, ScalarType.Float64)) / tensor(Std, ScalarType.Float64);
        var w = tensor(Weights.SelectMany(r => r).ToArray(), [Weights.Length, Mean.Length], ScalarType.Float64);
        var p = z.matmul(w.t()).add(tensor(Bias, ScalarType.Float64), One).sigmoid();
        if (Classes.Length == 2)
            p = cat([p.neg().add(One, One), p], 1); // [1 − p, p]
        else
            p = p / p.sum(1, keepdim: true).clamp_min(Tiny);
        var flat = p.contiguous().data<double>().ToArray();
        int k = Classes.Length;
        return [.. Enumerable.Range(0, rows.Length).Select(i => flat.AsSpan(i * k, k).ToArray())];
    }

    public static int[] Predict(double[][] scores) => [.. scores.Select(s => Array.IndexOf(s, s.Max()))];

    public (Dictionary<string, Tensor> Tensors, JsonObject Metadata) ToArtifact(string model)
    {
        var tensors = new Dictionary<string, Tensor>
        {
            ["weight"] = tensor(Weights.SelectMany(r => r).ToArray(), [Weights.Length, Mean.Length], ScalarType.Float64),
            ["bias"] = tensor(Bias, ScalarType.Float64),
            ["mean"] = tensor(Mean, ScalarType.Float64),
            ["std"] = tensor(Std, ScalarType.Float64),
        };
        if (Neurons is not null)
            tensors["neurons"] = tensor(Neurons.Select(n => (long)n).ToArray(), ScalarType.Int64);
        var metadata = new JsonObject
        {
            ["kind"] = "interpmesh.probe",
            ["model"] = model,
            ["hook"] = Hook,
            ["position"] = Position,
            ["classes"] = new JsonArray([.. Classes.Select(c => (JsonNode)c)]),
            ["c"] = C,
            ["class_weight"] = Balanced ? "balanced" : "none",
        };
        return (tensors, metadata);
    }

    public static Probe FromArtifact(IReadOnlyDictionary<string, Tensor> tensors, JsonObject metadata, string name)
    {
        string Need(string key) => metadata[key]?.GetValue<string>() ?? throw new InvalidParametersException($"artifact '{name}' is not a probe: its metadata has no '{key}'");
        if (metadata["kind"]?.GetValue<string>() != "interpmesh.probe")
            throw new InvalidParametersException($"artifact '{name}' is not a probe saved by the probing plugin");
        foreach (var t in new[] { "weight", "bias", "mean", "std" })
        {
            if (!tensors.ContainsKey(t))
                throw new InvalidParametersException($"probe artifact '{name}' lacks the tensor '{t}'");
        }
        var w = tensors["weight"].to(ScalarType.Float64);
        return new Probe
        {
            Hook = Need("hook"),
            Position = Need("position"),
            Classes = [.. metadata["classes"]!.AsArray().Select(c => c!.GetValue<string>())],
            C = metadata["c"]?.GetValue<double>() ?? 0,
            Balanced = metadata["class_weight"]?.GetValue<string>() == "balanced",
            Weights = [.. Enumerable.Range(0, (int)w.shape[0]).Select(i => w[i].data<double>().ToArray())],
            Bias = tensors["bias"].to(ScalarType.Float64).data<double>().ToArray(),
            Mean = tensors["mean"].to(ScalarType.Float64).data<double>().ToArray(),
            Std = tensors["std"].to(ScalarType.Float64).data<double>().ToArray(),
            Neurons = tensors.TryGetValue("neurons", out var n) ? [.. n.data<long>().ToArray().Select(v => (int)v)] : null,
        };
    }
}
