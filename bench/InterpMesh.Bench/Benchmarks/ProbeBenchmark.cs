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

    public ProbeBenchmark()
        : base("probe", "Probe fitting against scikit-learn, a layer sweep through the gateway, and steering extraction (run from a checkout; needs Debian's python3-sklearn).") =>
        Takes(nOption, dOption, textsOption);

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
        var times = new List<double>();
        Probe probe = Probe.Fit(Xs(train), Ys(train), ["0", "1"], 1.0, "h", "last"); // warm-up (JIT)
        for (int r = 0; r < 5; r++)
        {
            var sw = Stopwatch.StartNew();
            probe = Probe.Fit(Xs(train), Ys(train), ["0", "1"], 1.0, "h", "last");
            times.Add(sw.Elapsed.TotalSeconds);
        }
        var scores = probe.Scores(Xs(test));
        double ours = ProbeMetrics.Of(Ys(test), Probe.Predict(scores), scores, 2).Accuracy;
        string input = Path.Combine(context.TempFolder(), "probe-bench.json");
        File.WriteAllText(input, JsonSerializer.Serialize(new { x_train = Xs(train), y_train = Ys(train), x_test = Xs(test), y_test = Ys(test), c = 1.0 }));
        var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(root, "bench", "probing", "sklearn_logreg.py"), input]) { RedirectStandardOutput = true };
        psi.Environment["OMP_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        using (var py = Process.Start(psi)!)
        {
            var reference = JsonNode.Parse(py.StandardOutput.ReadToEnd())!;
            py.WaitForExit();
            double sk = reference["seconds"]!.GetValue<double>();
            double ourTime = times.Order().ElementAt(2);
            result["solver_n_d"] = $"{train.Length}x{d}";
            result["interpmesh_fit_s"] = ourTime;
            result["sklearn_fit_s"] = sk;
            result["fit_time_ratio_interpmesh_vs_sklearn"] = ourTime / sk;
            result["interpmesh_accuracy"] = ours;
            result["sklearn_accuracy"] = reference["accuracy"]!.GetValue<double>();
        }

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
