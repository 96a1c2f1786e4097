using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.Probing.Fitting;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench probe</c> (run from a checkout): (1) the probing plugin's logistic
/// regression against scikit-learn's on the same synthetic activations and split (accuracy and fit
/// time); (2) a layer sweep through the gateway on a GPT-2-small-shaped model, split into the time
/// spent getting activations and the time spent fitting probes; (3) steering-vector extraction on
/// the same mesh.
/// </summary>
internal sealed class ProbeBenchmark : Benchmark
{
    private readonly Option<int> nOption = SharedOptions.Int("--n", 2000, 20, "synthetic examples for the solver comparison");
    private readonly Option<int> dOption = SharedOptions.Int("--d", 768, 2, "their dimensions", "D");
    private readonly Option<int> textsOption = SharedOptions.Int("--texts", 128, 8, "texts in the layer sweep (and contrastive pairs in the steering extraction)", "T");
    private readonly Option<bool> solverOnlyOption = new("--solver-only") { Description = "run only part (1), the solver against scikit-learn" };

    public ProbeBenchmark()
        : base("probe", "Probe fitting against scikit-learn, a layer sweep through the gateway, and steering extraction (run from a checkout; needs Debian's python3-sklearn).") =>
        Takes(nOption, dOption, textsOption, solverOnlyOption);

    public override BenchReport Run(BenchContext context)
    {
        int n = context.Get(nOption), d = context.Get(dOption), texts = context.Get(textsOption);
        int threads = context.Threads;
        string root = BenchContext.Repository();
        var result = new Dictionary<string, object?> { ["threads"] = threads };

        // (1) Solver against scikit-learn.
        var rng = new Random(1);
        double Gauss() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        var y = Enumerable.Range(0, n).Select(i => i % 2).ToArray();
        var x = y.Select(label => Enumerable.Range(0, d).Select(j => (float)(Gauss() + (j < 8 ? (label == 1 ? 0.25 : -0.25) : 0))).ToArray()).ToArray();
        var (train, test) = Splits.Holdout(y, 0.25, seed: 2);
        float[][] Xs(int[] idx) => [.. idx.Select(i => x[i])];
        int[] Ys(int[] idx) => [.. idx.Select(i => y[i])];
        // Both sides at scikit-learn's defaults (tol 1e-4 and scipy's ftol; max_iter raised to 1000 so
        // that it stops on its tolerance, not on the iteration cap): the same stopping rule. Each fit
        // is timed 9 times (after a warm-up): median and minimum wall time, minimum CPU time of the
        // process (all threads; robust to other load on the machine).
        const int repeats = 9;
        (Probe Probe, double Median, double Min, double MinCpu) Time(Func<Probe> fit)
        {
            var probe = fit(); // warm-up (JIT)
            var wall = new List<double>();
            var cpu = new List<double>();
            using var self = Process.GetCurrentProcess();
            for (int r = 0; r < repeats; r++)
            {
                self.Refresh();
                var cpuStart = self.TotalProcessorTime;
                var sw = Stopwatch.StartNew();
                probe = fit();
                wall.Add(sw.Elapsed.TotalSeconds);
                self.Refresh();
                cpu.Add((self.TotalProcessorTime - cpuStart).TotalSeconds);
            }
            return (probe, wall.Order().ElementAt(repeats / 2), wall.Min(), cpu.Min());
        }
        string input = Path.Combine(context.TempFolder(), "probe-bench.json");
        JsonNode Sklearn(object request, int blasThreads)
        {
            File.WriteAllText(input, JsonSerializer.Serialize(request));
            var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(root, "bench", "probing", "sklearn_logreg.py"), input]) { RedirectStandardOutput = true };
            psi.Environment["OMP_NUM_THREADS"] = blasThreads.ToString(CultureInfo.InvariantCulture);
            psi.Environment["OPENBLAS_NUM_THREADS"] = blasThreads.ToString(CultureInfo.InvariantCulture);
            using var py = Process.Start(psi)!;
            var reference = JsonNode.Parse(py.StandardOutput.ReadToEnd())!;
            py.WaitForExit();
            return reference;
        }
        // scikit-learn with the benchmark's BLAS threads and with one: on a shared machine OpenBLAS's
        // spinning threads can slow it down many times, so the ratios are taken against its faster run.
        JsonNode Best(object request)
        {
            var many = Sklearn(request, threads);
            var one = Sklearn(request, 1);
            return one["min_seconds"]!.GetValue<double>() <= many["min_seconds"]!.GetValue<double>() ? one : many;
        }
        double[] grid = [0.01, 0.1, 1, 10];
        void Compare(string name, int[] trainRows, ProbeFitOptions options, string? classWeight)
        {
            var fit = Time(() => Probe.Fit(Xs(trainRows), Ys(trainRows), ["0", "1"], 1.0, "h", "last", null, options));
            var path = Time(() =>
            {
                Probe? previous = null;
                foreach (double c in grid)
                    previous = Probe.Fit(Xs(trainRows), Ys(trainRows), ["0", "1"], c, "h", "last", null, options, previous);
                return previous!;
            });
            var sk = Best(new { x_train = Xs(trainRows), y_train = Ys(trainRows), x_test = Xs(test), y_test = Ys(test), c = 1.0, tol = 1e-4, max_iter = 1000, repeats, class_weight = classWeight, c_path = grid });
            var scores = fit.Probe.Scores(Xs(test));
            var refP = sk["probabilities"]!.AsArray().Select(v => v!.GetValue<double>()).ToArray();
            result[$"{name}_n_d"] = $"{trainRows.Length}x{d}";
            result[$"{name}_interpmesh_fit_s_median_min_cpu"] = $"{fit.Median:F4} / {fit.Min:F4} / {fit.MinCpu:F4}";
            result[$"{name}_sklearn_fit_s_median_min_cpu"] = $"{sk["seconds"]!.GetValue<double>():F4} / {sk["min_seconds"]!.GetValue<double>():F4} / {sk["min_cpu_seconds"]!.GetValue<double>():F4}";
            result[$"{name}_ratio_min_wall"] = fit.Min / sk["min_seconds"]!.GetValue<double>();
            result[$"{name}_ratio_median_wall"] = fit.Median / sk["seconds"]!.GetValue<double>();
            result[$"{name}_ratio_min_cpu"] = fit.MinCpu / sk["min_cpu_seconds"]!.GetValue<double>();
            result[$"{name}_iterations_interpmesh_vs_sklearn"] = $"{fit.Probe.Iterations[0]} vs {sk["iterations"]!.GetValue<int>()}";
            result[$"{name}_accuracy_interpmesh_vs_sklearn"] = $"{ProbeMetrics.Of(Ys(test), Probe.Predict(scores), scores, 2).Accuracy:F4} vs {sk["accuracy"]!.GetValue<double>():F4}";
            result[$"{name}_max_probability_difference"] = refP.Select((p, i) => Math.Abs(p - scores[i][1])).Max();
            result[$"{name}_c_path_min_wall_s_interpmesh_vs_sklearn"] = $"{path.Min:F4} vs {sk["path_min_seconds"]!.GetValue<double>():F4}";
            result[$"{name}_c_path_ratio"] = path.Min / sk["path_min_seconds"]!.GetValue<double>();
        }
        Compare("plain", train, ProbeFitOptions.Default, null);
        // Balanced class weights (the k-sparse probes' default) on an imbalanced training part: all
        // negatives and every third positive.
        int[] imbalanced = [.. train.Where((row, k) => y[row] == 0 || k % 3 == 0)];
        Compare("balanced", imbalanced, new ProbeFitOptions(Balanced: true), "balanced");

        if (context.Get(solverOnlyOption))
            return new BenchReport(result);

        // (2) A layer sweep through the gateway: where does the time go?
        string dir = context.RandomModel("gpt2-small");
        foreach (var f in Directory.GetFiles(Path.Combine(root, "models", "gpt2-tokenizer")))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)), overwrite: true);
        var service = context.StartModelService(dir);
        var gateway = context.StartGateway(service.Urls.First(), Path.Combine(root, "plugins"), context.TempFolder());
        string[] words = ["the", "model", "reads", "a", "long", "story", "about", "cats", "and", "dogs", "in", "the", "park", "every", "day"];
        var rows = Enumerable.Range(0, texts).Select(i => new { text = string.Join(' ', Enumerable.Range(0, 60).Select(_ => words[rng.Next(words.Length)])), label = i % 2 }).ToList();
        using var channel = InterpMesh.Client.Channels.ForAddress(gateway.Urls.First());
        var client = new AnalysisService.AnalysisServiceClient(channel);
        var total = Stopwatch.StartNew();
        using var call = client.RunAnalysis(new AnalysisRequest
        {
            Plugin = "probing",
            ParametersJson = JsonSerializer.Serialize(new { rows, hooks = new[] { "blocks.*.hook_resid_post" }, c = 1.0, sparse = new { enabled = false }, save_probes = false, batch_size = 16 }),
        });
        Job? final = null;
        while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
            final = call.ResponseStream.Current.Finished ?? final;
        double seconds = total.Elapsed.TotalSeconds;

        // Steering extraction on the same mesh: one batched forward per side, every layer at once.
        var pairs = Enumerable.Range(0, texts).Select(_ => string.Join(' ', Enumerable.Range(0, 20).Select(_ => words[rng.Next(words.Length)]))).ToList();
        using var steer = client.RunAnalysis(new AnalysisRequest
        {
            Plugin = "steering",
            ParametersJson = JsonSerializer.Serialize(new { positive = pairs, negative = pairs.Select(t => t + " and cats").ToList(), batch_size = 32 }),
        });
        Job? steered = null;
        while (steer.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
            steered = steer.ResponseStream.Current.Finished ?? steered;
        if (steered?.State != JobState.Succeeded)
            throw new InvalidOperationException($"steering extraction failed: {steered?.Error}");
        result["steering_pairs"] = texts;
        result["steering_pairs_per_s"] = JsonNode.Parse(steered.Result.SummaryJson)!["pairs_per_second"]!.GetValue<double>();
        if (final?.State != JobState.Succeeded)
            throw new InvalidOperationException($"the layer sweep failed: {final?.Error}");
        var timing = JsonNode.Parse(final.Result.SummaryJson)!["seconds"]!;
        result["sweep"] = $"{texts} texts x ~60 tokens, 12 resid_post hooks, gpt2-small shape";
        result["sweep_total_s"] = seconds;
        result["sweep_activations_s"] = timing["activations"]!.GetValue<double>();
        result["sweep_dense_probes_s"] = timing["dense_probes"]!.GetValue<double>();
        return new BenchReport(result);
    }
}
