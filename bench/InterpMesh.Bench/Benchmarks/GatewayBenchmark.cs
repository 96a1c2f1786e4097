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
/// The client runs in the servers' process by default (so figures compare with earlier runs);
/// <c>--client process</c> runs it in a process of its own (this program again, told the two
/// addresses), as a user's client runs: its garbage collections and threads are not the servers'.
/// </summary>
internal sealed class GatewayBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> batchOption = SharedOptions.Batch(8);
    private readonly Option<int> seqOption = SharedOptions.Seq(128);
    private readonly Option<string> captureOption = SharedOptions.Capture("blocks.*.hook_resid_post");
    private readonly Option<int> itersOption = SharedOptions.Iters(5);
    private readonly Option<int> warmupOption = SharedOptions.Warmup(2);
    private readonly Option<int> unaryOption = SharedOptions.Int("--unary", 400, 10, "unary GetModelInfo calls each way (p50 and p99 reported)");
    private readonly Option<string> clientOption = SharedOptions.Choice("--client", "in-process",
        "where the timing client runs: in the servers' process (as every recorded run before 2026-12-02), or in a process of its own, as a user's client does", "in-process", "process");
    private readonly Option<string?> directOption = new("--direct-url") { Description = "measure only, against this model service (the client process's part)", HelpName = "URL", Hidden = true };
    private readonly Option<string?> gatewayOption = new("--gateway-url") { Description = "measure only, through this gateway (the client process's part)", HelpName = "URL", Hidden = true };

    public GatewayBenchmark()
        : base("gateway", "The gateway's cost against direct calls: activation streaming throughput and unary latency, on loopback.") =>
        Takes(presetOption, batchOption, seqOption, captureOption, itersOption, warmupOption, unaryOption, clientOption, directOption, gatewayOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int batch = context.Get(batchOption), seq = context.Get(seqOption), iters = context.Get(itersOption), warmup = context.Get(warmupOption), unary = context.Get(unaryOption);
        string capture = context.Get(captureOption);
        if (context.Get(directOption) is { } directUrl)
        {
            // The client process: time the calls and report the raw times to the parent.
            string gatewayUrl = context.Get(gatewayOption) ?? throw new BenchUsageException("--direct-url needs --gateway-url");
            return new BenchReport(Measure(directUrl, gatewayUrl, Presets.Config(preset).VocabSize, batch, seq, iters, warmup, unary, SharedOptions.Globs(capture)));
        }
        int threads = context.Threads;
        string model = context.RandomModel(preset);
        var service = context.StartModelService(model, new Dictionary<string, string?> { ["ModelService:MaxCaptureBytes"] = (4L << 30).ToString(CultureInfo.InvariantCulture) });
        string direct = service.Urls.First();
        var gateway = context.StartGateway(direct, Path.Combine(model, "no-plugins"), context.TempFolder());
        bool inProcess = context.Get(clientOption) == "in-process";
        var measured = inProcess
            ? Measure(direct, gateway.Urls.First(), Presets.Config(preset).VocabSize, batch, seq, iters, warmup, unary, SharedOptions.Globs(capture))
            : MeasureInChild(direct, gateway.Urls.First(), preset, batch, seq, iters, warmup, unary, capture);
        var result = new Dictionary<string, object?>
        {
            ["preset"] = preset,
            ["batch"] = batch,
            ["seq"] = seq,
            ["threads"] = threads,
            ["client"] = inProcess ? "in-process" : "process",
            ["capture"] = capture,
        };
        foreach (var (key, value) in measured)
            result[key] = value;
        return new BenchReport(result);
    }

    /// <summary>Runs this benchmark's client part in a process of its own and reads its report.</summary>
    private static Dictionary<string, object?> MeasureInChild(string direct, string gateway, string preset, int batch, int seq, int iters, int warmup, int unary, string capture)
    {
        var report = SelfProcess.Run("gateway client", "gateway", "--direct-url", direct, "--gateway-url", gateway, "--preset", preset, "--batch", Text(batch), "--seq", Text(seq),
            "--iters", Text(iters), "--warmup", Text(warmup), "--unary", Text(unary), "--capture", capture).AsObject();
        return report.ToDictionary(p => p.Key, p => (object?)p.Value!.GetValue<double>());
    }

    /// <summary>This process's minor page faults so far (Linux: /proc/self/stat field 10; 0 elsewhere).</summary>
    private static long MinorFaults()
    {
        if (!OperatingSystem.IsLinux())
            return 0;
        string stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[7], CultureInfo.InvariantCulture);
    }

    private static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>
    /// The timing: the same client calls alternate between direct and gateway, round by round: a
    /// Run streaming every position of the captured hooks, a Run without captures, and a Run
    /// capturing the same hooks at the last position only (the same forward: the hooks are
    /// materialised, e.g. attention patterns computed explicitly, but 1/seq of the bytes sent).
    /// </summary>
    private static Dictionary<string, object?> Measure(string direct, string gateway, int vocab, int batch, int seq, int iters, int warmup, int unary, string[] capture)
    {
        using var directChannel = InterpMesh.Client.Channels.ForAddress(direct);
        using var gatewayChannel = InterpMesh.Client.Channels.ForAddress(gateway);
        var clients = new[] { new Contracts.V1.ModelService.ModelServiceClient(directChannel), new Contracts.V1.ModelService.ModelServiceClient(gatewayChannel) };

        var plain = RunCalls.Random(batch, seq, vocab, new Random(7));
        var request = RunCalls.Capturing(plain, capture);
        var lastOnly = RunCalls.Capturing(plain, capture, new PositionSelection { Last = true });
        // Kinds, each direct (even) then through the gateway (odd): all positions, no captures, last position only.
        var requests = new[] { request, request, plain, plain, lastOnly, lastOnly };
        const int Kinds = 6;
        var times = new List<double>[Kinds];
        var cpu = new List<double>[Kinds];
        var faults = new List<double>[Kinds];
        for (int k = 0; k < Kinds; k++)
        {
            times[k] = [];
            cpu[k] = [];
            faults[k] = [];
        }
        var bytes = new long[Kinds];
        using var self = Process.GetCurrentProcess();
        // Untimed rounds first: the JIT's second tier compiles the hot paths of both servers and the client meanwhile.
        for (int i = 0; i < warmup + iters; i++)
        {
            for (int k = 0; k < Kinds; k++)
            {
                self.Refresh();
                var cpuBefore = self.TotalProcessorTime;
                long faultsBefore = MinorFaults();
                var sw = Stopwatch.StartNew();
                bytes[k] = RunCalls.Read(clients[k % 2], requests[k]);
                double elapsed = sw.Elapsed.TotalSeconds;
                self.Refresh();
                if (i < warmup)
                    continue;
                times[k].Add(elapsed);
                cpu[k].Add((self.TotalProcessorTime - cpuBefore).TotalSeconds);
                faults[k].Add(MinorFaults() - faultsBefore);
            }
        }
        static double Median(IEnumerable<double> t) => t.Order().ElementAt(t.Count() / 2);
        // Paired within a round (the calls compared ran seconds apart), then the median over rounds:
        // a machine whose speed drifts between rounds moves both members of a pair.
        double PairedDifference(int a, int b) => Median(times[a].Zip(times[b], (x, y) => x - y));
        double PairedRatio(int a, int b) => Median(times[a].Zip(times[b], (x, y) => x / y));
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

        double mb = bytes[0] / 1e6, lastMb = bytes[4] / 1e6;
        return new Dictionary<string, object?>
        {
            ["captured_mb"] = mb,
            ["captured_last_position_mb"] = lastMb,
            ["direct_run_with_capture_s"] = directCapture,
            ["gateway_run_with_capture_s"] = gatewayCapture,
            ["direct_run_plain_s"] = directPlain,
            ["gateway_run_plain_s"] = gatewayPlain,
            ["direct_run_capture_last_position_s"] = Median(times[4]),
            ["gateway_run_capture_last_position_s"] = Median(times[5]),
            ["streaming_throughput_ratio_gateway_vs_direct"] = directCapture / gatewayCapture,
            ["streaming_throughput_ratio_gateway_vs_direct_paired"] = PairedRatio(0, 1),
            ["streaming_mb_per_s_beyond_forward_direct"] = mb / Math.Max(1e-9, directCapture - directPlain),
            ["streaming_mb_per_s_beyond_forward_gateway"] = mb / Math.Max(1e-9, gatewayCapture - gatewayPlain),
            ["streaming_mb_per_s_beyond_same_forward_direct"] = (mb - lastMb) / Math.Max(1e-9, PairedDifference(0, 4)),
            ["streaming_mb_per_s_beyond_same_forward_gateway"] = (mb - lastMb) / Math.Max(1e-9, PairedDifference(1, 5)),
            ["cpu_s_direct_run_with_capture"] = Median(cpu[0]),
            ["cpu_s_gateway_run_with_capture"] = Median(cpu[1]),
            ["cpu_s_direct_run_plain"] = Median(cpu[2]),
            ["cpu_s_gateway_run_plain"] = Median(cpu[3]),
            ["cpu_s_direct_run_capture_last_position"] = Median(cpu[4]),
            ["minor_faults_direct_run_with_capture"] = Median(faults[0]),
            ["minor_faults_gateway_run_with_capture"] = Median(faults[1]),
            ["minor_faults_direct_run_plain"] = Median(faults[2]),
            ["minor_faults_gateway_run_plain"] = Median(faults[3]),
            ["unary_p50_ms_direct"] = P(latencies[0], 0.5),
            ["unary_p50_ms_gateway"] = P(latencies[1], 0.5),
            ["unary_p50_ms_added"] = P(latencies[1], 0.5) - P(latencies[0], 0.5),
            ["unary_p99_ms_direct"] = P(latencies[0], 0.99),
            ["unary_p99_ms_gateway"] = P(latencies[1], 0.99),
        };
    }
}
