using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Plugins.Probing;
using InterpMesh.Plugins.Probing.Fitting;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// Class balancing, SVM ranking, scikit-learn's split and the reference k grid, each against
/// scikit-learn 1.2.1 (Debian python3-sklearn; .ci/run installs it) on the same data
/// (python/sklearn_probing.py).
/// </summary>
public sealed class SklearnProbingTests
{
    internal static JsonNode Sklearn(object request)
    {
        Assert.True(File.Exists("/usr/bin/python3"), "Debian's python3 is missing");
        string dir = Path.Combine(Path.GetTempPath(), $"interpmesh-sklearn-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string input = Path.Combine(dir, "request.json");
            File.WriteAllText(input, JsonSerializer.Serialize(request));
            var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(AppContext.BaseDirectory, "python", "sklearn_probing.py"), input])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            psi.Environment["OMP_NUM_THREADS"] = "1";
            psi.Environment["OPENBLAS_NUM_THREADS"] = "1";
            using var p = Process.Start(psi)!;
            var stderr = p.StandardError.ReadToEndAsync();
            string stdout = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"scikit-learn reference failed (is python3-sklearn installed? apt-get install python3-sklearn):\n{stderr.Result}");
            return JsonNode.Parse(stdout)!;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static double[] Doubles(JsonNode? node) => [.. node!.AsArray().Select(v => v!.GetValue<double>())];

    private static double Gauss(Random rng) => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    /// <summary>Imbalanced data (30% positives), d neurons, a weak signal on a few of them.</summary>
    private static (float[][] X, int[] Y) Imbalanced(int n, int d, int seed)
    {
        var rng = new Random(seed);
        var y = Enumerable.Range(0, n).Select(_ => rng.NextDouble() < 0.3 ? 1 : 0).ToArray();
        var x = y.Select(label => Enumerable.Range(0, d).Select(j => (float)(Gauss(rng) * (1 + j % 4) + (j < 6 ? (label == 1 ? 0.6 : 0) * (1 + j % 4) * (1 + j) / 3 : 0))).ToArray()).ToArray();
        return (x, y);
    }

    private static T[] Pick<T>(T[] a, int[] i) => [.. i.Select(k => a[k])];

    private static float[][] ZScore(float[][] x)
    {
        int n = x.Length, d = x[0].Length;
        var mean = Enumerable.Range(0, d).Select(j => x.Average(r => (double)r[j])).ToArray();
        var std = Enumerable.Range(0, d).Select(j => Math.Max(Math.Sqrt(x.Average(r => (r[j] - mean[j]) * (r[j] - mean[j]))), 1e-8)).ToArray();
        return [.. x.Select(r => r.Select((v, j) => (float)((v - mean[j]) / std[j])).ToArray())];
    }

    [Fact]
    public void Balanced_class_weights_give_scikit_learns_balanced_logistic_regression()
    {
        var (x, y) = Imbalanced(600, 40, seed: 11);
        var (train, test) = Splits.Holdout(y, 0.3, seed: 1);
        // The probe fits on raw features (standardize: false), so both sides see the same matrix.
        var options = new ProbeFitOptions(Balanced: true, Standardize: false, Tolerance: 1e-8);
        var probe = Probe.Fit(Pick(x, train), Pick(y, train), ["0", "1"], 0.5, "h", "last", null, options);
        var reference = Sklearn(new { op = "logreg", x_train = Pick(x, train), y_train = Pick(y, train), x_test = Pick(x, test), c = 0.5, class_weight = "balanced", tol = 1e-10, max_iter = 100000 });
        var refCoef = Doubles(reference["coef"]);
        double scale = refCoef.Max(Math.Abs);
        double worstCoef = refCoef.Select((c, j) => Math.Abs(c - probe.Weights[0][j])).Max();
        // Same weighted objective. Both solvers also stop on scipy's relative decrease (ftol 2.2e-9,
        // which scikit-learn 1.2 leaves in place whatever tol is), so the optimum is reached to about
        // 1e-4: coefficients and intercept agree to 2e-3 of the largest coefficient, probabilities to 1e-3.
        Assert.True(worstCoef <= 2e-3 * scale, $"coefficients differ by {worstCoef} (largest {scale})");
        Assert.True(Math.Abs(reference["intercept"]!.GetValue<double>() - probe.Bias[0]) <= 2e-3 * Math.Max(1, scale), $"intercept {probe.Bias[0]} vs {reference["intercept"]} ({probe.Iterations[0]} iterations)");
        var ours = probe.Scores(Pick(x, test));
        var refP = Doubles(reference["probabilities"]);
        double worstP = refP.Select((p, i) => Math.Abs(p - ours[i][1])).Max();
        Assert.True(worstP <= 1e-3, $"probabilities differ by {worstP}");

        // The weights matter here: unweighted, scikit-learn's probabilities move far more than that.
        var plain = Sklearn(new { op = "logreg", x_train = Pick(x, train), y_train = Pick(y, train), x_test = Pick(x, test), c = 0.5, tol = 1e-10, max_iter = 100000 });
        double moved = Doubles(plain["probabilities"]).Select((p, i) => Math.Abs(p - ours[i][1])).Max();
        Assert.True(moved > 0.05, $"unweighted probabilities moved only {moved}");

        // Default tolerance (scikit-learn's tol 1e-4, its stopping rule): same predictions, probabilities within 1e-3.
        var loose = Probe.Fit(Pick(x, train), Pick(y, train), ["0", "1"], 0.5, "h", "last", null, options with { Tolerance = 1e-4 });
        var looseScores = loose.Scores(Pick(x, test));
        Assert.True(refP.Select((p, i) => Math.Abs(p - looseScores[i][1])).Max() <= 1e-3);
    }

    [Fact]
    public void Balanced_weights_are_scikit_learns_formula()
    {
        // n / (n_classes · bincount): 2 positives and 6 negatives of 8 → 2 and 2/3.
        Assert.Equal([2.0, 2.0, 2 / 3.0, 2 / 3.0, 2 / 3.0, 2 / 3.0, 2 / 3.0, 2 / 3.0], Probe.BalancedWeights([1, 1, 0, 0, 0, 0, 0, 0]));
    }

    [Fact]
    public void Svm_ranking_orders_neurons_as_scikit_learns_LinearSVC()
    {
        var (raw, y) = Imbalanced(400, 48, seed: 21);
        var z = ZScore(raw); // the rankings see z-scored features; scikit-learn gets the same matrix
        var ours = NeuronRanking.Score("svm", raw, y, 2, seed: 0);
        var ourOrder = NeuronRanking.Rank(ours);
        // Stated criterion, against LinearSVC(loss='hinge') run to convergence (the same unique optimum):
        // the top-10 sets are equal and Spearman's rank correlation over all neurons is at least 0.99.
        var converged = Sklearn(new { op = "svc", x = z, y, loss = "hinge", tol = 1e-9, max_iter = 1000000 });
        var refScore = Doubles(converged["coef"]![0]).Select(Math.Abs).ToArray();
        Assert.Equal(NeuronRanking.Rank(refScore)[..10].Order(), ourOrder[..10].Order());
        double rho = Spearman(ours, refScore);
        Assert.True(rho >= 0.99, $"rank correlation {rho}");
        // Against the reference's own call (LinearSVC(loss='hinge'), defaults: tol 1e-4, at most 1000
        // passes, liblinear's random order), which stops short of the optimum on this data: the four
        // strongest planted neurons (2–5) are its top four and ours; its fifth varies between its runs
        // (observed: neuron 25 or 28).
        var defaults = Sklearn(new { op = "svc", x = z, y, loss = "hinge" });
        var defaultOrder = NeuronRanking.Rank([.. Doubles(defaults["coef"]![0]).Select(Math.Abs)]);
        Assert.Equal([2, 3, 4, 5], defaultOrder[..4].Order());
        Assert.Equal([2, 3, 4, 5], ourOrder[..4].Order());

        // The solver itself, on both losses, against a tightly converged LinearSVC: same weights.
        foreach (var loss in new[] { "hinge", "squared_hinge" })
        {
            var tight = Sklearn(new { op = "svc", x = z, y, loss, tol = 1e-9, max_iter = 1000000 });
            var (w, b, _) = LinearSvm.Fit(z, [.. y.Select(l => l == 1)], 1.0, squaredHinge: loss == "squared_hinge", tolerance: 1e-8, maxEpochs: 100000);
            var refW = Doubles(tight["coef"]![0]);
            double worst = refW.Select((v, j) => Math.Abs(v - w[j])).Max(), scale = refW.Max(Math.Abs);
            Assert.True(worst <= 1e-3 * scale, $"{loss}: weights differ by {worst} (largest {scale})");
            Assert.True(Math.Abs(tight["intercept"]![0]!.GetValue<double>() - b) <= 1e-3 * Math.Max(1, scale), $"{loss}: bias");
        }
    }

    private static double Spearman(double[] a, double[] b)
    {
        static double[] Ranks(double[] v)
        {
            var order = Enumerable.Range(0, v.Length).OrderBy(i => v[i]).ToArray();
            var r = new double[v.Length];
            for (int i = 0; i < order.Length; i++)
                r[order[i]] = i;
            return r;
        }
        var ra = Ranks(a);
        var rb = Ranks(b);
        double ma = ra.Average(), mb = rb.Average();
        double cov = ra.Select((v, i) => (v - ma) * (rb[i] - mb)).Sum();
        return cov / Math.Sqrt(ra.Sum(v => (v - ma) * (v - ma)) * rb.Sum(v => (v - mb) * (v - mb)));
    }

    [Fact]
    public void Sklearn_split_equals_train_test_split_index_for_index()
    {
        int[] sizes = [2, 5, 10, 37, 100, 641, 1000, 5000];
        foreach (var (fraction, seed) in new[] { (0.4, 42), (0.25, 0), (0.3, 1), (0.5, 123456789) })
        {
            var reference = Sklearn(new { op = "split", n = sizes, test_size = fraction, seed });
            foreach (var s in reference["splits"]!.AsArray())
            {
                int n = s!["n"]!.GetValue<int>();
                var (train, test) = Splits.Shuffle(n, fraction, (uint)seed);
                Assert.Equal(s["test"]!.AsArray().Select(v => v!.GetValue<int>()), test);
                Assert.Equal(s["train"]!.AsArray().Select(v => v!.GetValue<int>()), train);
            }
        }
    }

    [Fact]
    public void Reference_k_grid_is_gurnee_et_als_make_k_list()
    {
        // make_k_list(d): [1..8, 10, 12] + 16·2^i for i < floor(log2 d) − 3, then d if not already last.
        Assert.Equal([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 128, 256, 512, 768], ProbingPlugin.KList(KGrid.Reference, 768));
        Assert.Equal([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64], ProbingPlugin.KList(KGrid.Reference, 64));
        Assert.Equal([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072], ProbingPlugin.KList(KGrid.Reference, 3072));
        Assert.Equal([1, 2, 4, 8, 16, 32, 64], ProbingPlugin.KList(KGrid.PowersOfTwo, 64));
    }

    [Theory]
    [InlineData("""{"preset": "concept_depth", "texts": ["a"], "hooks": ["blocks.*.hook_resid_post"]}""", "parameters.hooks: preset concept_depth sets hooks; leave it out")]
    [InlineData("""{"preset": "concept_depth", "texts": ["a"], "seed": 3, "c": 2}""", "parameters.seed: preset concept_depth sets seed, c; leave them out")]
    [InlineData("""{"preset": "concept_depth", "texts": ["a"], "position": "max"}""", "parameters.position: preset concept_depth sets position")]
    [InlineData("""{"preset": "concept_depth", "texts": ["a"], "sparse": {"enabled": false}}""", "parameters.sparse: preset concept_depth sets sparse")]
    [InlineData("""{"preset": "concept_depth", "texts": ["a"], "standardize": false}""", "parameters.standardize: preset concept_depth sets standardize")]
    public void The_concept_depth_preset_refuses_the_settings_it_fixes(string json, string message)
    {
        var p = Assert.IsType<TrainParameters>(PluginParameters.Parse<ProbingParameters>(JsonDocument.Parse(json).RootElement));
        var e = Assert.Throws<InvalidParametersException>(() => ProbingPlugin.Effective(p));
        Assert.StartsWith(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_concept_depth_preset_sets_luckfort_cds_probe()
    {
        var p = ProbingPlugin.Effective(Assert.IsType<TrainParameters>(PluginParameters.Parse<ProbingParameters>(JsonDocument.Parse("""{"preset": "concept_depth", "texts": ["a"]}""").RootElement)));
        Assert.Equal(["blocks.*.ln2.hook_normalized"], p.Hooks);
        Assert.Equal((ProbePosition.Last, SplitKind.Sklearn, 0.4, 42, 1.0), (p.Position, p.Split, p.Holdout, p.Seed, p.C));
        Assert.Equal((ClassWeight.None, false, 1e-4, 100, false), (p.ClassWeight, p.Standardize, p.Tolerance, p.MaxIterations, p.Sparse!.Enabled));
    }
}
