using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench stream</c>: a ModelService on loopback serving a random model of a preset
/// shape; times Run without captures against Run streaming every <c>hook_resid_post</c> to this
/// client, and 1 against N concurrent clients, in one run.
/// </summary>
internal sealed class StreamBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> batchOption = SharedOptions.Batch(8);
    private readonly Option<int> seqOption = SharedOptions.Seq(128);
    private readonly Option<string> captureOption = SharedOptions.Capture("blocks.*.hook_resid_post");
    private readonly Option<int> itersOption = SharedOptions.Iters(5);
    private readonly Option<int> clientsOption = SharedOptions.Clients(8);
    private readonly Option<int> clientRowsOption = SharedOptions.Int("--client-rows", 1, 1, "rows per concurrent client's request");
    private readonly Option<int?> clientSeqOption = SharedOptions.OptionalInt("--client-seq", 1, "tokens per concurrent client's row (default: --seq)");
    private readonly Option<int?> windowOption = SharedOptions.BatchWindowMs();

    public StreamBenchmark()
        : base("stream", "Activation streaming beyond the forward, and 1 against N concurrent clients (dynamic batching), on a model service on loopback.") =>
        Takes(presetOption, batchOption, seqOption, captureOption, itersOption, clientsOption, clientRowsOption, clientSeqOption, windowOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int batch = context.Get(batchOption), seq = context.Get(seqOption), iters = context.Get(itersOption);
        int clients = context.Get(clientsOption), clientRows = context.Get(clientRowsOption), clientSeq = context.Get(clientSeqOption) ?? seq;
        int window = context.Get(windowOption) ?? 2;
        string[] capture = SharedOptions.Globs(context.Get(captureOption));
        int threads = context.Threads;

        var config = Presets.Config(preset);
        var app = context.StartModelService(context.RandomModel(preset), new Dictionary<string, string?>
        {
            ["ModelService:MaxChunkBytes"] = (1 << 20).ToString(CultureInfo.InvariantCulture),
            ["ModelService:BatchWindowMs"] = window.ToString(CultureInfo.InvariantCulture),
            ["ModelService:MaxCaptureBytes"] = (4L << 30).ToString(CultureInfo.InvariantCulture),
        });
        using var channel = InterpMesh.Client.Channels.ForAddress(app.Urls.First());
        var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
        var rng = new Random(7);
        var request = RunCalls.Random(batch, seq, config.VocabSize, rng);
        var capturing = RunCalls.Capturing(request, capture);
        long Call(RunRequest r) => RunCalls.Read(client, r);
        double Median(Func<double> measure)
        {
            measure();
            var t = Enumerable.Range(0, iters).Select(_ => measure()).Order().ToList();
            return t[t.Count / 2];
        }
        long captured = 0;
        double plain = 0, streamed = 0;
        // Alternate the two so machine noise hits both alike.
        var plainTimes = new List<double>();
        var streamTimes = new List<double>();
        Call(request);
        Call(capturing);
        for (int i = 0; i < iters; i++)
        {
            var sw = Stopwatch.StartNew();
            Call(request);
            plainTimes.Add(sw.Elapsed.TotalSeconds);
            sw.Restart();
            captured = Call(capturing);
            streamTimes.Add(sw.Elapsed.TotalSeconds);
        }
        plain = plainTimes.Order().ElementAt(iters / 2);
        streamed = streamTimes.Order().ElementAt(iters / 2);
        // Concurrency: each client sends small requests (client-rows x client-seq) back to back.
        var small = RunCalls.Random(clientRows, clientSeq, config.VocabSize, rng);
        const int perClient = 4;
        var batchSizes = new List<int>();
        void Client()
        {
            for (int i = 0; i < perClient; i++)
            {
                using var call = client.Run(small);
                while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                {
                    if (call.ResponseStream.Current.Result is { } r)
                        lock (batchSizes)
                            batchSizes.Add(r.ForwardBatchSize);
                }
            }
        }
        double one = Median(() =>
        {
            var sw = Stopwatch.StartNew();
            Client();
            return sw.Elapsed.TotalSeconds;
        });
        batchSizes.Clear();
        double many = Median(() =>
        {
            var sw = Stopwatch.StartNew();
            Task.WaitAll(Enumerable.Range(0, clients).Select(_ => Task.Run(Client)).ToArray());
            return sw.Elapsed.TotalSeconds;
        });

        var result = new Dictionary<string, object?>
        {
            ["preset"] = preset,
            ["batch"] = batch,
            ["seq"] = seq,
            ["threads"] = threads,
            ["run_seconds"] = plain,
            ["capture"] = string.Join(",", capture),
            ["run_with_capture_seconds"] = streamed,
            ["streaming_overhead_ratio"] = streamed / plain,
            ["captured_mb"] = captured / 1e6,
            ["streaming_mb_per_s"] = captured / 1e6 / streamed,
            ["streaming_mb_per_s_excluding_forward"] = captured / 1e6 / Math.Max(1e-9, streamed - plain),
            ["clients"] = clients,
            ["client_request"] = $"{clientRows}x{clientSeq}",
            ["batch_window_ms"] = window,
            ["mean_forward_batch_with_clients"] = batchSizes.Count == 0 ? 0 : batchSizes.Average(),
            ["throughput_ratio_clients_vs_one"] = clients * one / many,
        };
        return new BenchReport(result);
    }
}
