using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Local;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.ToyModels.Export;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Cli.Bench;

/// <summary>
/// <c>interpmesh bench stream</c>: a ModelService on loopback serving a random model of a preset
/// shape; times Run without captures against Run streaming every <c>hook_resid_post</c> to this
/// client, and 1 against N concurrent clients, in one run.
/// </summary>
internal static class StreamBenchmark
{
    public static int Run(CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        string preset = args.Text("preset") ?? "gpt2-small";
        int batch = args.Int("batch", min: 1) ?? 8;
        int seq = args.Int("seq", min: 1) ?? 128;
        int iters = args.Int("iters", min: 1) ?? 5;
        int clients = args.Int("clients", min: 1) ?? 8;
        int clientRows = args.Int("client-rows", min: 1) ?? 1;
        int clientSeq = args.Int("client-seq", min: 1) ?? seq;
        int window = args.Int("batch-window-ms", min: 0) ?? 2;
        string[] capture = (args.Text("capture") ?? "blocks.*.hook_resid_post").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        int threads = TorchRuntime.Initialize(args.Int("threads", min: 1));
        args.RejectUnknown("bench stream");

        var config = Presets.Config(preset);
        string dir = Path.Combine(Path.GetTempPath(), "interpmesh-bench-" + Guid.NewGuid().ToString("N"));
        try
        {
            BenchMesh.SaveRandomModel(config, dir);
            var app = BenchMesh.StartModelService(dir, threads, new()
            {
                ["ModelService:MaxChunkBytes"] = (1 << 20).ToString(),
                ["ModelService:BatchWindowMs"] = window.ToString(),
                ["ModelService:MaxCaptureBytes"] = (4L << 30).ToString(),
            });
            using var channel = InterpMesh.Client.Channels.ForAddress(app.Urls.First());
            var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
            var rng = new Random(7);
            var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            for (int b = 0; b < batch; b++)
                request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { Enumerable.Range(0, seq).Select(_ => rng.Next(config.VocabSize)) } } });
            var capturing = request.Clone();
            capturing.Captures.Add(new Capture { Hooks = { capture } });

            long Call(RunRequest r)
            {
                long bytes = 0;
                using var call = client.Run(r);
                while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                    bytes += call.ResponseStream.Current.Activation?.Data.Length ?? 0;
                return bytes;
            }
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
            var small = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            for (int b = 0; b < clientRows; b++)
                small.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { Enumerable.Range(0, clientSeq).Select(_ => rng.Next(config.VocabSize)) } } });
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
            BenchMesh.Stop(app);

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
            if (json)
                JsonOutput.Write(stdout, result);
            else
                foreach (var (k, v) in result)
                    stdout.WriteLine($"  {k,-40} {v}");
            return 0;
        }
        finally
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }
}
