using System.CommandLine;
using System.Diagnostics;
using InterpMesh.Bench.Harness;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench forward</c>: tokens/s of the hooked forward on a randomly initialised model
/// of a preset shape. Captures are copied to managed memory each iteration, as a service would
/// before sending them, so their cost is counted. See bench/forward/ for the PyTorch side.
/// </summary>
internal sealed class ForwardBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> batchOption = SharedOptions.Batch(1);
    private readonly Option<int> seqOption = SharedOptions.Seq(128);
    private readonly Option<string?> captureOption = SharedOptions.OptionalCapture();
    private readonly Option<string> logitsOption = SharedOptions.Choice("--logits", "last", "logits computed", "none", "last", "all");
    private readonly Option<string> dtypeOption = SharedOptions.DType();
    private readonly Option<int> warmupOption = SharedOptions.Warmup(2);
    private readonly Option<int> itersOption = SharedOptions.Iters(5);

    public ForwardBenchmark()
        : base("forward", "Forward throughput (tokens/s) on a random model of a preset shape; bench/forward/run.sh compares it with PyTorch.") =>
        Takes(presetOption, batchOption, seqOption, captureOption, logitsOption, dtypeOption, warmupOption, itersOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int batch = context.Get(batchOption), seq = context.Get(seqOption), warmup = context.Get(warmupOption), iters = context.Get(itersOption);
        string? capture = context.Get(captureOption);
        var mode = context.Get(logitsOption) switch
        {
            "none" => LogitsMode.None,
            "all" => LogitsMode.All,
            _ => LogitsMode.Last,
        };
        var dtype = SharedOptions.DTypeOf(context.Get(dtypeOption));
        int threads = context.Threads;

        var config = Presets.Config(preset);
        if (seq > config.ContextLength)
            throw new BenchUsageException($"--seq {seq} exceeds the {preset} context length of {config.ContextLength}");
        using var worker = new TorchWorker();
        var model = worker.Run(() => Presets.CreateRandom(config, seed: 1234, dtype));
        var plan = capture is null ? HookPlan.Empty : HookPlan.Build(model.Hooks, [new CaptureRequest(SharedOptions.Globs(capture))], null);
        byte[] buffer = [];
        long capturedBytes = 0;
        CaptureSink sink = (_, t) =>
        {
            using var c = t.contiguous();
            var bytes = c.bytes;
            if (buffer.Length < bytes.Length)
                buffer = new byte[bytes.Length];
            bytes.CopyTo(buffer);
            capturedBytes += bytes.Length;
            t.Dispose();
        };

        var times = worker.Run(() =>
        {
            var ids = randint(0, config.VocabSize, [batch, seq], dtype: ScalarType.Int64, generator: new Generator(7));
            var result = new List<double>();
            for (int i = 0; i < warmup + iters; i++)
            {
                using var scope = NewDisposeScope();
                var sw = Stopwatch.StartNew();
                var logits = model.Forward(ids, null, plan, sink, mode);
                if (logits is not null)
                    _ = logits.sum().item<float>();
                sw.Stop();
                if (i >= warmup)
                    result.Add(sw.Elapsed.TotalSeconds);
            }
            return result;
        });
        worker.Run(() =>
        {
            model.Dispose();
            return 0;
        });
        times.Sort();
        double median = times[times.Count / 2];
        double tokensPerS = batch * seq / median;
        long rssMb = Process.GetCurrentProcess().WorkingSet64 >> 20;
        var values = new Dictionary<string, object?>
        {
            ["impl"] = "interpmesh",
            ["preset"] = preset,
            ["batch"] = batch,
            ["seq"] = seq,
            ["threads"] = threads,
            ["logits"] = mode.ToString().ToLowerInvariant(),
            ["capture"] = capture,
            ["captured_bytes_per_iter"] = capturedBytes / (warmup + iters),
            ["iters"] = iters,
            ["seconds_per_iter"] = median,
            ["tokens_per_s"] = tokensPerS,
            ["rss_mb"] = rssMb,
            ["mkl_cpu_dispatch"] = TorchRuntime.MklCpuDispatch,
        };
        return new BenchReport(values, stdout => stdout.WriteLine(
            $"{preset} batch {batch}×{seq}, {threads} threads, logits {mode}, capture {capture ?? "none"}, MKL dispatch {TorchRuntime.MklCpuDispatch}: {tokensPerS:F0} tokens/s ({median * 1000:F1} ms/iter, median of {iters})"));
    }
}
