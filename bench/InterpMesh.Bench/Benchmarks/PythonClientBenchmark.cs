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
/// model service on loopback serving a random model of a preset shape. Rounds alternate the two
/// (the Python side runs <c>bench/python/run_with_cache_bench.py</c> as a child process and times
/// inside it), so machine noise hits both alike; medians over all timed calls are compared.
/// </summary>
internal sealed class PythonClientBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> batchOption = SharedOptions.Batch(8);
    private readonly Option<int> seqOption = SharedOptions.Seq(128);
    private readonly Option<string> captureOption = SharedOptions.Capture("blocks.*.hook_resid_post");
    private readonly Option<int> itersOption = SharedOptions.Iters(5, "timed calls per client per round");
    private readonly Option<int> roundsOption = SharedOptions.Int("--rounds", 3, 1, "rounds, each timing the .NET client then the Python one");
    private readonly Option<string> pythonOption = new("--python")
    {
        Description = "the Python interpreter (needs grpcio, protobuf, numpy)",
        HelpName = "PATH",
        DefaultValueFactory = _ => "/usr/bin/python3",
    };

    public PythonClientBenchmark()
        : base("python-client", "The Python client's run_with_cache against the .NET client for the same Run, on a model service on loopback.") =>
        Takes(presetOption, batchOption, seqOption, captureOption, itersOption, roundsOption, pythonOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int batch = context.Get(batchOption), seq = context.Get(seqOption), iters = context.Get(itersOption), rounds = context.Get(roundsOption);
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
        Dotnet();
        for (int r = 0; r < rounds; r++)
        {
            for (int i = 0; i < iters; i++)
                dotnetTimes.Add(Dotnet());
            var result = RunPython(python, script, url, ids, string.Join(",", capture), iters);
            pythonTimes.AddRange(result.GetProperty("times").EnumerateArray().Select(t => t.GetDouble()));
            pythonCaptured = result.GetProperty("captured_bytes").GetInt64();
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

    private static JsonElement RunPython(string python, string script, string url, string ids, string capture, int iters)
    {
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { script, "--url", url, "--ids", ids, "--capture", capture, "--iters", iters.ToString(CultureInfo.InvariantCulture), "--warmup", "1", "--json" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {python}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new BenchUsageException($"{Path.GetFileName(script)} failed (exit {p.ExitCode}): {stderr.Result.Trim()}");
        return JsonDocument.Parse(stdout.Result).RootElement.Clone();
    }
}
