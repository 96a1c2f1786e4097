using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using InterpMesh.Bench.Harness;
using InterpMesh.Plugins.SAE.Model;
using InterpMesh.Plugins.SAE.Training;
using InterpMesh.Runtime.Execution;
using static TorchSharp.torch;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench sae</c> (run from a checkout, needs Debian's python3-torch): the SAE
/// plugin's TopK trainer against the same loop in PyTorch eager (bench/sae/pytorch_sae.py), same
/// shapes and synthetic data distribution, activations per second.
/// </summary>
internal sealed class SaeBenchmark : Benchmark
{
    private readonly Option<int> dInOption = SharedOptions.Int("--d-in", 768, 2, "input width", "D");
    private readonly Option<int> dSaeOption = SharedOptions.Int("--d-sae", 3072, 2, "SAE width", "S");
    private readonly Option<int> kOption = SharedOptions.Int("--k", 32, 1, "active features per example (TopK)", "K");
    private readonly Option<int> batchOption = SharedOptions.Batch(1024, "activations per training step");
    private readonly Option<int> stepsOption = SharedOptions.Int("--steps", 200, 10, "training steps");

    public SaeBenchmark()
        : base("sae", "SAE training (TopK) against the same loop in PyTorch eager (run from a checkout; needs Debian's python3-torch).") =>
        Takes(dInOption, dSaeOption, kOption, batchOption, stepsOption);

    public override BenchReport Run(BenchContext context)
    {
        int dIn = context.Get(dInOption), dSae = context.Get(dSaeOption), k = context.Get(kOption);
        int steps = context.Get(stepsOption), batch = context.Get(batchOption);
        int threads = context.Threads;
        string root = BenchContext.Repository();

        double ours;
        using (var worker = new TorchWorker())
        {
            ours = worker.Run(() =>
            {
                using var _ = inference_mode(false);
                var g = new Generator(0);
                var features = randn([2 * dSae, dIn], generator: g);
                features /= features.norm(1, keepdim: true);
                var data = Enumerable.Range(0, steps).Select(_ =>
                {
                    var c = zeros(batch, 2 * dSae);
                    c.scatter_(1, rand([batch, 2 * dSae], generator: g).argsort(1)[.., ..k], rand([batch, k], generator: g) + 0.5f);
                    return c.matmul(features).DetachFromDisposeScope();
                }).ToList();
                using var sae = SparseAutoencoder.Create("topk", dIn, dSae, k, 0);
                var trainer = new SaeTrainer(sae, new TrainingOptions(3e-3, Math.Min(50, steps / 10), steps, AuxK: Math.Min(dSae / 2, 4 * k), DeadAfterSteps: Math.Max(50, steps / 5)));
                trainer.InitializeDecoderBias(data[0]);
                var sw = Stopwatch.StartNew();
                foreach (var x in data)
                {
                    using var scope = NewDisposeScope();
                    trainer.Train(x);
                }
                return steps * batch / sw.Elapsed.TotalSeconds;
            });
        }
        var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(root, "bench", "sae", "pytorch_sae.py"), .. new[] { dIn, dSae, k, steps, batch, threads }.Select(v => v.ToString(CultureInfo.InvariantCulture))]) { RedirectStandardOutput = true };
        psi.Environment["OMP_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        using var py = Process.Start(psi)!;
        var reference = JsonNode.Parse(py.StandardOutput.ReadToEnd())!;
        py.WaitForExit();
        double theirs = reference["activations_per_second"]!.GetValue<double>();
        var result = new Dictionary<string, object?>
        {
            ["shape"] = $"d_in {dIn}, d_sae {dSae}, k {k}, batch {batch}, {steps} steps",
            ["threads"] = threads,
            ["interpmesh_activations_per_s"] = ours,
            ["pytorch_activations_per_s"] = theirs,
            ["ratio_interpmesh_vs_pytorch"] = ours / theirs,
        };
        return new BenchReport(result);
    }
}
