using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench gateway</c>: a model service and a gateway in front of it on loopback; the
/// same client calls alternate between the two: activation streaming throughput (a Run capturing
/// every <c>hook_resid_post</c>) and unary latency (GetModelInfo), through the gateway vs. direct.
/// </summary>
internal sealed class GatewayBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> batchOption = SharedOptions.Batch(8);
    private readonly Option<int> seqOption = SharedOptions.Seq(128);
    private readonly Option<string> captureOption = SharedOptions.Capture("blocks.*.hook_resid_post");
    private readonly Option<int> itersOption = SharedOptions.Iters(5);
    private readonly Option<int> unaryOption = SharedOptions.Int("--unary", 400, 10, "unary GetModelInfo calls each way (p50 and p99 reported)");

    public GatewayBenchmark()
        : base("gateway", "The gateway's cost against direct calls: activation streaming throughput and unary latency, on loopback.") =>
        Takes(presetOption, batchOption, seqOption, captureOption, itersOption, unaryOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int batch = context.Get(batchOption), seq = context.Get(seqOption), iters = context.Get(itersOption), unary = context.Get(unaryOption);
        string[] capture = SharedOptions.Globs(context.Get(captureOption));
        int threads = context.Threads;

        var config = Presets.Config(preset);
        string model = context.RandomModel(preset);
        var service = context.StartModelService(model, new Dictionary<string, string?> { ["ModelService:MaxCaptureBytes"] = (4L << 30).ToString(CultureInfo.InvariantCulture) });
        string direct = service.Urls.First();
        var gateway = context.StartGateway(direct, Path.Combine(model, "no-plugins"), context.TempFolder());
        using var directChannel = InterpMesh.Client.Channels.ForAddress(direct);
        using var gatewayChannel = InterpMesh.Client.Channels.ForAddress(gateway.Urls.First());
        var clients = new[] { new Contracts.V1.ModelService.ModelServiceClient(directChannel), new Contracts.V1.ModelService.ModelServiceClient(gatewayChannel) };

        var plain = RunCalls.Random(batch, seq, config.VocabSize, new Random(7));
        var request = RunCalls.Capturing(plain, capture);
        static long Call(Contracts.V1.ModelService.ModelServiceClient c, RunRequest r) => RunCalls.Read(c, r);
        // Streaming: alternate direct and gateway, with and without captures; medians.
        var times = new List<double>[4];
        for (int k = 0; k < 4; k++)
            times[k] = [];
        long captured = 0;
        foreach (var c in clients)
        {
            Call(c, request);
            Call(c, plain);
        }
        for (int i = 0; i < iters; i++)
        {
            for (int k = 0; k < 4; k++)
            {
                var sw = Stopwatch.StartNew();
                long bytes = Call(clients[k % 2], k < 2 ? request : plain);
                times[k].Add(sw.Elapsed.TotalSeconds);
                if (k == 0)
                    captured = bytes;
            }
        }
        double Median(List<double> t) => t.Order().ElementAt(t.Count / 2);
        double directCapture = Median(times[0]), gatewayCapture = Median(times[1]), directPlain = Median(times[2]), gatewayPlain = Median(times[3]);

        // Unary: GetModelInfo (the hook catalogue, a few KB), alternating, p50 and p99 of each.
        var info = new GetModelInfoRequest();
        var latencies = new[] { new List<double>(), new List<double>() };
        for (int i = 0; i < 50; i++)
            foreach (var c in clients)
                c.GetModelInfo(info);
        for (int i = 0; i < unary; i++)
        {
            for (int k = 0; k < 2; k++)
            {
                var sw = Stopwatch.StartNew();
                clients[k].GetModelInfo(info);
                latencies[k].Add(sw.Elapsed.TotalMilliseconds);
            }
        }
        double P(List<double> t, double q) => t.Order().ElementAt((int)(q * (t.Count - 1)));


        double mb = captured / 1e6;
        var result = new Dictionary<string, object?>
        {
            ["preset"] = preset,
            ["batch"] = batch,
            ["seq"] = seq,
            ["threads"] = threads,
            ["capture"] = string.Join(",", capture),
            ["captured_mb"] = mb,
            ["direct_run_with_capture_s"] = directCapture,
            ["gateway_run_with_capture_s"] = gatewayCapture,
            ["direct_run_plain_s"] = directPlain,
            ["gateway_run_plain_s"] = gatewayPlain,
            ["streaming_throughput_ratio_gateway_vs_direct"] = directCapture / gatewayCapture,
            ["streaming_mb_per_s_beyond_forward_direct"] = mb / Math.Max(1e-9, directCapture - directPlain),
            ["streaming_mb_per_s_beyond_forward_gateway"] = mb / Math.Max(1e-9, gatewayCapture - gatewayPlain),
            ["unary_p50_ms_direct"] = P(latencies[0], 0.5),
            ["unary_p50_ms_gateway"] = P(latencies[1], 0.5),
            ["unary_p50_ms_added"] = P(latencies[1], 0.5) - P(latencies[0], 0.5),
            ["unary_p99_ms_direct"] = P(latencies[0], 0.99),
            ["unary_p99_ms_gateway"] = P(latencies[1], 0.99),
        };
        return new BenchReport(result);
    }
}
