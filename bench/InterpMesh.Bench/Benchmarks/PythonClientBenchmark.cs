using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using InterpMesh.Bench.Harness;
using InterpMesh.Client;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench python-client</c>: the Python package's <c>run_with_cache</c> against the .NET
/// client (<see cref="MeshClient.RunAsync"/>, activations assembled whole) for the same Run on one
/// model service on loopback serving a random model of a preset shape. The Python side is
/// <c>bench/python/run_with_cache_bench.py --stdin</c>, one child process that times each call inside
/// itself when asked; the two clients alternate call by call, so machine noise hits both alike, and
/// the medians over all timed calls are compared.
/// </summary>
internal sealed class PythonClientBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> batchOption = SharedOptions.Batch(8);
    private readonly Option<int> seqOption = SharedOptions.Seq(128);
    private readonly Option<string> captureOption = SharedOptions.Capture("blocks.*.hook_resid_post");
    private readonly Option<int> itersOption = SharedOptions.Iters(15, "timed calls per client, alternating");
    private readonly Option<string> pythonOption = new("--python")
    {
        Description = "the Python interpreter (needs grpcio, protobuf, numpy)",
        HelpName = "PATH",
        DefaultValueFactory = _ => "/usr/bin/python3",
    };

    public PythonClientBenchmark()
        : base("python-client", "The Python client's run_with_cache against the .NET client for the same Run, on a model service on loopback.") =>
        Takes(presetOption, batchOption, seqOption, captureOption, itersOption, pythonOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int batch = context.Get(batchOption), seq = context.Get(seqOption), iters = context.Get(itersOption);
        string[] capture = SharedOptions.Globs(context.Get(captureOption));
        string python = context.Get(pythonOption);
        string script = Path.Combine(BenchContext.Repository(), "bench", "python", "run_with_cache_bench.py");
        int threads = context.Threads;

        var config = Presets.Config(preset);
        var app = context.StartModelService(context.RandomModel(preset), new Dictionary<string, string?>
        {
            ["ModelService:MaxChunkBytes"] = (1 << 20).ToString(CultureInfo.InvariantCulture),
            ["ModelService:MaxCaptureBytes"] = (4L << 30).ToString(CultureInfo.InvariantCulture),
        });
        string url = app.Urls.First();
        var request = RunCalls.Capturing(RunCalls.Random(batch, seq, config.VocabSize, new Random(7)), capture);
        string ids = Path.Combine(context.TempFolder(), "ids.json");
        File.WriteAllText(ids, JsonSerializer.Serialize(request.Inputs.Select(i => i.Tokens.Ids.ToArray())));

        using var client = MeshClient.Connect(url);
        long captured = 0;
        double Dotnet()
        {
            var sw = Stopwatch.StartNew();
            long bytes = 0;
            foreach (var item in client.RunAsync(request).ToBlockingEnumerable())
                bytes += item.Activation?.Data.Length ?? 0;
            captured = bytes;
            return sw.Elapsed.TotalSeconds;
        }

        var dotnetTimes = new List<double>();
        var pythonTimes = new List<double>();
        long pythonCaptured = 0;
        using (var worker = PythonWorker.Start(python, script, url, ids, string.Join(",", capture)))
        {
            Dotnet();
            for (int i = 0; i < iters; i++)
            {
                dotnetTimes.Add(Dotnet());
                var (seconds, bytes) = worker.Call();
                pythonTimes.Add(seconds);
                pythonCaptured = bytes;
            }
        }
        if (pythonCaptured != captured)
            throw new InvalidOperationException($"the Python client received {pythonCaptured} activation bytes, the .NET client {captured}");
        double dotnet = Median(dotnetTimes), py = Median(pythonTimes);
        return new BenchReport(new Dictionary<string, object?>
        {
            ["preset"] = preset,
            ["batch"] = batch,
            ["seq"] = seq,
            ["threads"] = threads,
            ["capture"] = string.Join(",", capture),
            ["captured_mb"] = captured / 1e6,
            ["calls_per_client"] = dotnetTimes.Count,
            ["dotnet_seconds"] = dotnet,
            ["python_seconds"] = py,
            ["python_vs_dotnet_ratio"] = py / dotnet,
            ["dotnet_min_seconds"] = dotnetTimes.Min(),
            ["python_min_seconds"] = pythonTimes.Min(),
        });
    }

    private static double Median(List<double> times) => times.Order().ElementAt(times.Count / 2);

    /// <summary>The Python side: one <c>run_with_cache_bench.py --stdin</c> process, one timed call per request.</summary>
    private sealed class PythonWorker : IDisposable
    {
        private readonly Process process;

        private PythonWorker(Process process) => this.process = process;

        public static PythonWorker Start(string python, string script, string url, string ids, string capture)
        {
            var psi = new ProcessStartInfo(python) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = false };
            foreach (var a in new[] { script, "--url", url, "--ids", ids, "--capture", capture, "--warmup", "1", "--stdin" })
                psi.ArgumentList.Add(a);
            var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {python}");
            var worker = new PythonWorker(p);
            if (p.StandardOutput.ReadLine() != "ready")
            {
                worker.Dispose();
                throw new BenchUsageException($"{Path.GetFileName(script)} did not start (its error is above)");
            }
            return worker;
        }

        public (double Seconds, long Bytes) Call()
        {
            process.StandardInput.WriteLine("run");
            process.StandardInput.Flush();
            string line = process.StandardOutput.ReadLine() ?? throw new BenchUsageException("the Python benchmark process ended (its error is above)");
            var json = JsonDocument.Parse(line).RootElement;
            return (json.GetProperty("seconds").GetDouble(), json.GetProperty("captured_bytes").GetInt64());
        }

        public void Dispose()
        {
            try
            {
                process.StandardInput.WriteLine("quit");
                process.StandardInput.Close();
                if (!process.WaitForExit(10_000))
                    process.Kill();
            }
            catch (IOException)
            {
            }
            process.Dispose();
        }
    }
}
