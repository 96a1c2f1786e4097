using System.Diagnostics;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Local;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Bench;

/// <summary>
/// <c>interpmesh bench forward</c>: tokens/s of the hooked forward on a randomly initialised model
/// of a preset shape. Captures are copied to managed memory each iteration, as a service would
/// before sending them, so their cost is counted. See bench/forward/ for the PyTorch side.
/// </summary>
internal static class ForwardBenchmark
{
    public static int Run(CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        string preset = args.Text("preset") ?? "gpt2-small";
        int batch = args.Int("batch", min: 1) ?? 1;
        int seq = args.Int("seq", min: 1) ?? 128;
        int warmup = args.Int("warmup", min: 0) ?? 2;
        int iters = args.Int("iters", min: 1) ?? 5;
        string? capture = args.Text("capture");
        var mode = args.Text("logits") switch
        {
            null or "last" => LogitsMode.Last,
            "none" => LogitsMode.None,
            "all" => LogitsMode.All,
            var other => throw new UsageException($"--logits must be none, last or all, got '{other}'"),
        };
        var dtype = LocalSession.ParseDType(args.Text("dtype"));
        int threads = TorchRuntime.Initialize(args.Int("threads", min: 1));
        args.RejectUnknown("bench forward");

        var config = Presets.Config(preset);
        if (seq > config.ContextLength)
            throw new UsageException($"--seq {seq} exceeds the {preset} context length of {config.ContextLength}");
        using var worker = new TorchWorker();
        var model = worker.Run(() => Presets.CreateRandom(config, seed: 1234, dtype));
        var plan = capture is null ? HookPlan.Empty : HookPlan.Build(model.Hooks, [new CaptureRequest([capture])], null);
        byte[] buffer = [];
        long capturedBytes = 0;
        CaptureSink sink = (_, t) =>
        {
            var bytes = t.bytes;
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
        if (json)
        {
            JsonOutput.Write(stdout, new Dictionary<string, object?>
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
            });
        }
        else
        {
            stdout.WriteLine($"{preset} batch {batch}×{seq}, {threads} threads, logits {mode}, capture {capture ?? "none"}, MKL dispatch {TorchRuntime.MklCpuDispatch}: {tokensPerS:F0} tokens/s ({median * 1000:F1} ms/iter, median of {iters})");
        }
        return 0;
    }
}
