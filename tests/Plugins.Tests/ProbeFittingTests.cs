using System.Diagnostics;
using System.Text.Json;
using InterpMesh.Plugins.Probing;
using InterpMesh.Plugins.Probing.Fitting;

namespace InterpMesh.Plugins.Tests;

/// <summary>The probing plugin's solver and rankings on synthetic activations with a known answer.</summary>
public sealed class ProbeFittingTests
{
    /// <summary>
    /// n examples, d neurons of Gaussian noise; the label shifts neurons 5 and 17 (by <paramref name="signal"/>
    /// standard deviations) and nothing else.
    /// </summary>
    private static (float[][] X, int[] Y) Planted(int n, int d, double signal, int seed)
    {
        var rng = new Random(seed);
        double Gauss() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        var x = new float[n][];
        var y = new int[n];
        for (int i = 0; i < n; i++)
        {
            y[i] = i % 2;
            x[i] = [.. Enumerable.Range(0, d).Select(j => (float)(Gauss() * (1 + j % 3) + 10 * (j % 5)))];
            double s = y[i] == 1 ? signal : -signal;
            // Half the signal on each side, in units of the neuron's own noise std.
            x[i][5] += (float)(s / 2 * (1 + 5 % 3));
            x[i][17] += (float)(s / 2 * (1 + 17 % 3));
        }
        return (x, y);
    }

    private static T[] Pick<T>(T[] a, int[] i) => [.. i.Select(k => a[k])];

    [Fact]
    public void Accuracy_and_probabilities_match_scikit_learn_on_the_same_split()
    {
        Assert.True(File.Exists("/usr/bin/python3"), "Debian's python3 is missing");
        var (x, y) = Planted(400, 64, 1.0, seed: 1);
        var (train, test) = Splits.Holdout(y, 0.3, seed: 2);
        foreach (double c in new[] { 0.1, 1.0 })
        {
            var probe = Probe.Fit(Pick(x, train), Pick(y, train), ["0", "1"], c, "h", "last");
            var scores = probe.Scores(Pick(x, test));
            var ours = ProbeMetrics.Of(Pick(y, test), Probe.Predict(scores), scores, 2);

            string input = Path.Combine(Path.GetTempPath(), $"probe-ref-{Guid.NewGuid():N}.json");
            File.WriteAllText(input, JsonSerializer.Serialize(new { x_train = Pick(x, train), y_train = Pick(y, train), x_test = Pick(x, test), y_test = Pick(y, test), c }));
            var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(RepoPaths.Root, "bench", "probing", "sklearn_logreg.py"), input]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi)!;
            string stdout = p.StandardOutput.ReadToEnd(), stderr = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"scikit-learn reference failed (is python3-sklearn installed? .ci/run installs it: apt-get install python3-sklearn):\n{stderr}");
            using var reference = JsonDocument.Parse(stdout);
            double refAccuracy = reference.RootElement.GetProperty("accuracy").GetDouble();
            Assert.True(Math.Abs(refAccuracy - ours.Accuracy) <= 0.01, $"C={c}: accuracy {ours.Accuracy} vs scikit-learn {refAccuracy}");
            // Same objective, so the same optimum: probabilities agree closely, not just the accuracy.
            // (Observed: ≤ 1.2e-4 at C = 1, where scikit-learn's lbfgs stops on its relative-decrease
            // test while ours runs to a gradient below 1e-7.)
            var refP = reference.RootElement.GetProperty("probabilities").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            double worst = refP.Select((rp, i) => Math.Abs(rp - scores[i][1])).Max();
            Assert.True(worst < 1e-3, $"C={c}: probabilities differ from scikit-learn's by up to {worst}");
            Assert.InRange(ours.Accuracy, 0.6, 0.99);
        }
    }

    [Fact]
    public void Every_ranking_but_random_puts_the_planted_neurons_first_and_two_of_them_suffice()
    {
        var (x, y) = Planted(300, 64, 3.0, seed: 3);
        var (train, test) = Splits.Holdout(y, 0.3, seed: 4);
        foreach (var method in NeuronRanking.Methods.Where(m => m != "random"))
        {
            var order = NeuronRanking.Rank(NeuronRanking.Score(method, Pick(x, train), Pick(y, train), 2, seed: 0));
            Assert.True(order[..2].Order().SequenceEqual([5, 17]), $"{method} ranked {string.Join(", ", order[..5])} first");
            var probe = Probe.Fit(Pick(x, train), Pick(y, train), ["0", "1"], 1.0, "h", "last", order[..2]);
            Assert.True(ProbingPlugin.Evaluate(probe, Pick(x, test), Pick(y, test), 2).Accuracy >= 0.9, method);
        }
        var random = NeuronRanking.Rank(NeuronRanking.Score("random", Pick(x, train), Pick(y, train), 2, seed: 0));
        Assert.False(random[..2].Order().SequenceEqual([5, 17]));
    }

    [Fact]
    public void Shuffled_labels_give_chance_accuracy()
    {
        var (x, y) = Planted(400, 64, 1.5, seed: 5);
        var rng = new Random(7);
        int[] shuffled = [.. y.Select(_ => rng.Next(2))];
        var (train, test) = Splits.Holdout(shuffled, 0.3, seed: 8);
        var probe = Probe.Fit(Pick(x, train), Pick(shuffled, train), ["0", "1"], 1.0, "h", "last");
        Assert.InRange(ProbingPlugin.Evaluate(probe, Pick(x, test), Pick(shuffled, test), 2).Accuracy, 0.35, 0.65);
    }

    [Fact]
    public void Metrics_match_hand_computed_values()
    {
        int[] truth = [1, 1, 1, 0, 0, 0];
        int[] predicted = [1, 1, 0, 1, 0, 0];
        double[][] scores = [[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.9, 0.1]];
        var m = ProbeMetrics.Of(truth, predicted, scores, 2);
        Assert.Equal(4 / 6.0, m.Accuracy, 12);
        Assert.Equal(2 / 3.0, m.Precision, 12);
        Assert.Equal(2 / 3.0, m.Recall, 12);
        Assert.Equal(2 / 3.0, m.F1, 12);
        // Positives 0.9, 0.8, 0.4 against negatives 0.7, 0.2, 0.1: 8 of 9 pairs ordered right.
        Assert.Equal(8 / 9.0, m.RocAuc, 12);
        var folds = Splits.KFold([0, 0, 0, 1, 1, 1, 0, 1], 2, seed: 1);
        Assert.Equal(Enumerable.Range(0, 8), folds.SelectMany(f => f.Test).Order());
        Assert.All(folds, f => Assert.Equal(2, f.Test.Count(i => new[] { 0, 0, 0, 1, 1, 1, 0, 1 }[i] == 1)));
    }
}

/// <summary>The second thread of a probe fit (<see cref="PassPartner"/>) and the fit that uses it.</summary>
public sealed class PassPartnerTests
{
    [Fact]
    public void Every_chunk_of_every_pass_is_computed_and_the_winning_result_is_that_passs()
    {
        const int chunks = 8, passes = 2000;
        using var partner = new PassPartner(chunks);
        var values = new double[2][] { new double[chunks], new double[chunks] };
        for (int p = 0; p < passes; p++)
        {
            // Every few passes a pause longer than the partner's spin, so it blocks and must be woken.
            if (p % 500 == 499)
                Thread.Sleep(5);
            int pass = p;
            var ran = new int[chunks];
            var winners = partner.Run((k, worker) =>
            {
                Interlocked.Increment(ref ran[k]);
                values[worker][k] = Math.Sqrt(pass + k);
            });
            Assert.Equal(chunks, winners.Length);
            for (int k = 0; k < chunks; k++)
            {
                Assert.InRange(ran[k], 1, 2);
                Assert.InRange(winners[k], 0, 1);
                // The counted buffer holds this pass's value for the chunk.
                Assert.Equal(Math.Sqrt(pass + k), values[winners[k]][k]);
            }
        }
        // The partner takes part (not left to timing: the caller's chunk 0 waits until the partner has run one).
        using var partnerRan = new ManualResetEventSlim();
        partner.Run((k, worker) =>
        {
            if (worker == 1)
                partnerRan.Set();
            else if (k == 0)
                partnerRan.Wait(TimeSpan.FromSeconds(10));
        });
        Assert.True(partnerRan.IsSet, "the partner never ran a chunk");
    }

    [Fact]
    public void A_failing_chunk_fails_the_pass_and_the_partner_keeps_working()
    {
        using var partner = new PassPartner(4);
        var e = Assert.Throws<InvalidOperationException>(() => partner.Run((k, _) => { if (k == 2) throw new ArithmeticException("chunk 2"); }));
        Assert.IsType<ArithmeticException>(e.InnerException);
        var ran = new int[4];
        partner.Run((k, _) => Interlocked.Increment(ref ran[k]));
        Assert.All(ran, r => Assert.InRange(r, 1, 2));
    }

    [Fact]
    public void A_fit_shared_with_the_partner_reaches_the_optimum_a_second_computation_checks()
    {
        // 4096 × 128 = 512 Ki entries: above LogisticRegression.ParallelEntries, so the partner runs.
        const int n = 4096, d = 128;
        Assert.True((long)n * d >= LogisticRegression.ParallelEntries);
        var rng = new Random(3);
        var xs = new float[n * d];
        var ys = new double[n];
        for (int i = 0; i < n; i++)
        {
            ys[i] = i % 2;
            for (int j = 0; j < d; j++)
                xs[i * d + j] = (float)(rng.NextDouble() * 2 - 1 + (j < 4 ? (ys[i] - 0.5) * 0.6 : 0));
        }
        const double c = 0.5;
        var (w, b, _) = LogisticRegression.FitL2(xs, n, d, ys, c, tolerance: 1e-8);
        // The gradient of mean log-loss + ‖w‖²/(2Cn), computed here row by row in one thread: zero at the optimum.
        var grad = new double[d + 1];
        for (int i = 0; i < n; i++)
        {
            double z = b;
            for (int j = 0; j < d; j++)
                z += w[j] * xs[i * d + j];
            double r = 1 / (1 + Math.Exp(-z)) - ys[i];
            for (int j = 0; j < d; j++)
                grad[j] += r * xs[i * d + j] / n;
            grad[d] += r / n;
        }
        for (int j = 0; j < d; j++)
            grad[j] += w[j] / (c * n);
        double worst = grad.Max(Math.Abs);
        Assert.True(worst < 1e-5, $"the gradient at the fitted weights is {worst}, not ~0");
        Assert.True(w.Take(4).All(v => v > 0.1), "the four informative neurons should carry positive weights");
    }
}
