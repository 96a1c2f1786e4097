using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// A trained linear probe: z-score normalisation (training mean and std), then one binary
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

    /// <summary>Fits on raw activation rows (all neurons, or those in <paramref name="neurons"/>).</summary>
    public static Probe Fit(float[][] rows, int[] labels, string[] classes, double c, string hook, string position, int[]? neurons = null)
    {
        // Plain arrays throughout: the solver runs its own threads, and torch's would only compete.
        int n = rows.Length, d = neurons?.Length ?? rows[0].Length;
        var mean = new double[d];
        var std = new double[d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++)
                mean[j] += rows[i][neurons?[j] ?? j];
        for (int j = 0; j < d; j++)
            mean[j] /= n;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++)
            {
                double v = rows[i][neurons?[j] ?? j] - mean[j];
                std[j] += v * v;
            }
        for (int j = 0; j < d; j++)
            std[j] = Math.Max(Math.Sqrt(std[j] / n), 1e-8);
        var z = new float[n * d];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++)
                z[i * d + j] = (float)((rows[i][neurons?[j] ?? j] - mean[j]) / std[j]);
        var weights = new List<double[]>();
        var bias = new List<double>();
        foreach (int positive in classes.Length == 2 ? [1] : Enumerable.Range(0, classes.Length))
        {
            var (w, b, _) = LogisticRegression.FitL2(z, n, d, [.. labels.Select(l => l == positive ? 1.0 : 0.0)], c);
            weights.Add(w);
            bias.Add(b);
        }
        return new Probe
        {
            Hook = hook, Position = position, Classes = classes, C = c, Neurons = neurons,
            Mean = mean, Std = std, Weights = [.. weights], Bias = [.. bias],
        };
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
            Weights = [.. Enumerable.Range(0, (int)w.shape[0]).Select(i => w[i].data<double>().ToArray())],
            Bias = tensors["bias"].to(ScalarType.Float64).data<double>().ToArray(),
            Mean = tensors["mean"].to(ScalarType.Float64).data<double>().ToArray(),
            Std = tensors["std"].to(ScalarType.Float64).data<double>().ToArray(),
            Neurons = tensors.TryGetValue("neurons", out var n) ? [.. n.data<long>().ToArray().Select(v => (int)v)] : null,
        };
    }
}
