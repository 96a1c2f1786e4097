using System.Diagnostics;
using Grpc.Core;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Local;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Cli.Bench;

/// <summary>
/// <c>interpmesh bench serving</c>: one model service on loopback (or <c>--server URL</c>), plain gRPC
/// clients, one run. Measures a small Run's p50 latency idle, while another client runs a long
/// Generate and while another client holds a capture stream open without reading; and Generate
/// tokens/s with 1 client against N concurrent clients.
/// </summary>
internal static class ServingBenchmark
{
    private static readonly string[] AllMeasures = ["idle", "during-generate", "during-stall", "generate", "engine"];

    public static int Run(CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        string? preset = args.Text("preset");
        string? modelPath = args.Text("model");
        string? server = args.Text("server");
        int iters = args.Int("iters", min: 1) ?? 50;
        int runSeq = args.Int("run-seq", min: 1) ?? 16;
        int longTokens = args.Int("long-tokens", min: 1) ?? 400;
        int genTokens = args.Int("gen-tokens", min: 1) ?? 128;
        int promptLength = args.Int("prompt-length", min: 1) ?? 8;
        int clients = args.Int("clients", min: 1) ?? 8;
        int rounds = args.Int("rounds", min: 1) ?? 5;
        string stallCapture = args.Text("stall-capture") ?? "*";
        string? saveModel = args.Text("save-model");
        int? window = args.Int("batch-window-ms", min: 0);
        var measures = (args.Text("only") ?? string.Join(',', AllMeasures)).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var m in measures)
        {
            if (!AllMeasures.Contains(m))
                throw new UsageException($"--only takes a comma-separated list of {string.Join(", ", AllMeasures)}; got '{m}'");
        }
        if (preset is not null && modelPath is not null)
            throw new UsageException("give --model PATH or --preset NAME, not both");
        if (saveModel is not null && preset is null)
            throw new UsageException("--save-model DIR keeps the random checkpoint of a --preset; give --preset NAME");
        if (server is not null && (preset is not null || modelPath is not null || window is not null))
            throw new UsageException("--server measures a running service; it takes no --model, --preset or --batch-window-ms");
        int threads = TorchRuntime.Initialize(args.Int("threads", min: 1));
        args.RejectUnknown("bench serving");

        string? dir = null;
        WebApplication? app = null;
        try
        {
            string source;
            if (server is null)
            {
                if (preset is not null)
                {
                    // --save-model keeps the checkpoint, so another build (`interpmesh serve --model DIR`) can serve the same weights.
                    modelPath = saveModel ?? (dir = Path.Combine(Path.GetTempPath(), "interpmesh-bench-" + Guid.NewGuid().ToString("N")));
                    if (!File.Exists(Path.Combine(modelPath, "config.json")))
                        BenchMesh.SaveRandomModel(Presets.Config(preset), modelPath);
                    source = $"preset {preset} (random weights)";
                }
                else
                {
                    modelPath ??= Path.Combine(BenchMesh.Repository(), "models", "stories260K", "stories260K.bin");
                    source = modelPath;
                }
                app = BenchMesh.StartModelService(modelPath, threads, window is null ? null : new() { ["ModelService:BatchWindowMs"] = window.Value.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                server = app.Urls.First();
            }
            else
            {
                source = server;
            }
            var settings = new Settings(iters, runSeq, longTokens, genTokens, promptLength, clients, rounds, stallCapture);
            var result = Measure(server, measures, settings);
            if (app is not null && measures.Contains("engine"))
            {
                var engine = app.Services.GetRequiredService<ModelHost>().Engine!;
                foreach (var (k, v) in MeasureEngine(engine, settings))
                    result[k] = v;
            }
            var report = new Dictionary<string, object?>
            {
                ["model"] = source,
                ["threads"] = threads,
                ["in_process_server"] = app is not null,
                ["batch_window_ms"] = window,
                ["run_request"] = $"1x{runSeq}, last logits",
                ["iters"] = iters,
                ["long_generate_tokens"] = longTokens,
                ["generate_tokens"] = genTokens,
                ["prompt_length"] = promptLength,
                ["clients"] = clients,
                ["rounds"] = rounds,
            };
            foreach (var (k, v) in result)
                report[k] = v;
            if (json)
                JsonOutput.Write(stdout, report);
            else
                PrintTable(stdout, report, clients);
            return 0;
        }
        finally
        {
            if (app is not null)
                BenchMesh.Stop(app);
            if (dir is not null && Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
    }

    private sealed record Settings(int Iters, int RunSeq, int LongTokens, int GenTokens, int PromptLength, int Clients, int Rounds, string StallCapture);

    private static Dictionary<string, object?> Measure(string address, string[] measures, Settings s)
    {
        // Each "client" has its own channel (its own HTTP/2 connection), as separate users would.
        var channels = new List<Grpc.Net.Client.GrpcChannel>();
        Contracts.V1.ModelService.ModelServiceClient NewClient()
        {
            var channel = InterpMesh.Client.Channels.ForAddress(address);
            channels.Add(channel);
            return new Contracts.V1.ModelService.ModelServiceClient(channel);
        }
        try
        {
            var runner = NewClient();
            var info = runner.GetModelInfo(new GetModelInfoRequest());
            int vocab = info.VocabSize;
            var rng = new Random(7);
            int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
            if (s.PromptLength + s.LongTokens > info.ContextLength)
                throw new UsageException($"--prompt-length + --long-tokens must fit the model's context of {info.ContextLength}");

            var runRequest = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            runRequest.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { Ids(s.RunSeq) } } });
            double RunOnce()
            {
                var sw = Stopwatch.StartNew();
                using var call = runner.Run(runRequest, deadline: DateTime.UtcNow.AddMinutes(2));
                while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                {
                }
                return sw.Elapsed.TotalMilliseconds;
            }
            GenerateRequest Generate(int maxNew)
            {
                var g = new GenerateRequest { MaxNewTokens = maxNew, NoDefaultStop = true };
                g.Prompts.Add(new Input { Tokens = new TokenIds { Ids = { Ids(s.PromptLength) } } });
                return g;
            }
            // Tokens generated by one Generate call, read to the end. Asynchronous, as a real client's
            // reader: blocking thread-pool threads on N concurrent streams would starve the pool that
            // the channels' I/O (and, in process, the server) run on, and measure the pool instead.
            static async Task<int> ReadGenerateAsync(Contracts.V1.ModelService.ModelServiceClient client, GenerateRequest request, CancellationToken ct)
            {
                int tokens = 0;
                using var call = client.Generate(request, deadline: DateTime.UtcNow.AddMinutes(10), cancellationToken: ct);
                while (await call.ResponseStream.MoveNext(ct).ConfigureAwait(false))
                    tokens += call.ResponseStream.Current.TokenIds.Count(id => id >= 0);
                return tokens;
            }
            static int ReadGenerate(Contracts.V1.ModelService.ModelServiceClient client, GenerateRequest request, CancellationToken ct)
                => ReadGenerateAsync(client, request, ct).GetAwaiter().GetResult();

            var result = new Dictionary<string, object?>();
            // Warm up every path once (JIT, first forward, allocator).
            for (int i = 0; i < 5; i++)
                RunOnce();
            ReadGenerate(runner, Generate(8), CancellationToken.None);

            // The three Run measures alternate in blocks (idle, during a Generate, during a stalled
            // stream), so a change in the machine's load hits all three alike; p50 over all blocks.
            bool during = measures.Contains("during-generate"), stall = measures.Contains("during-stall");
            if (measures.Contains("idle") || during || stall)
            {
                int blocks = Math.Min(s.Iters, 5);
                int per = Math.Max(1, s.Iters / blocks);
                var idleTimes = new List<double>();
                var duringTimes = new List<double>();
                var stallTimes = new List<double>();
                int generations = 0;
                var other = NewClient();
                var stalled = NewClient();
                for (int b = 0; b < blocks; b++)
                {
                    idleTimes.AddRange(Enumerable.Range(0, per).Select(_ => RunOnce()));
                    if (during)
                    {
                        // Another client generates long sequences back to back while this one times its Runs.
                        using var stop = new CancellationTokenSource();
                        using var generating = new ManualResetEventSlim();
                        var background = Task.Run(async () =>
                        {
                            while (!stop.IsCancellationRequested)
                            {
                                var request = Generate(s.LongTokens);
                                try
                                {
                                    generating.Set();
                                    await ReadGenerateAsync(other, request, stop.Token).ConfigureAwait(false);
                                    Interlocked.Increment(ref generations);
                                }
                                catch (Exception e) when (stop.IsCancellationRequested && e is RpcException or OperationCanceledException)
                                {
                                }
                            }
                        });
                        generating.Wait();
                        Thread.Sleep(50);
                        duringTimes.AddRange(Enumerable.Range(0, per).Select(_ => RunOnce()));
                        stop.Cancel();
                        background.GetAwaiter().GetResult();
                    }
                    if (stall)
                    {
                        // Another client asks for every hook at every step of a long Generate, reads the first
                        // message and then nothing; its call stays open until this client's Runs are timed.
                        var request = Generate(s.LongTokens);
                        request.Captures.Add(new Capture { Hooks = { s.StallCapture } });
                        using var cancel = new CancellationTokenSource();
                        using var call = stalled.Generate(request, deadline: DateTime.UtcNow.AddMinutes(10), cancellationToken: cancel.Token);
                        call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult();
                        Thread.Sleep(200);
                        stallTimes.AddRange(Enumerable.Range(0, per).Select(_ => RunOnce()));
                        cancel.Cancel();
                    }
                }
                double idle = Percentile(idleTimes, 0.5);
                result["run_idle_p50_ms"] = idle;
                result["run_idle_p95_ms"] = Percentile(idleTimes, 0.95);
                if (during)
                {
                    double p50 = Percentile(duringTimes, 0.5);
                    result["run_during_generate_p50_ms"] = p50;
                    result["run_during_generate_p95_ms"] = Percentile(duringTimes, 0.95);
                    result["run_during_generate_ratio"] = p50 / idle;
                    result["long_generates_completed_meanwhile"] = generations;
                }
                if (stall)
                {
                    double p50 = Percentile(stallTimes, 0.5);
                    result["run_during_stall_p50_ms"] = p50;
                    result["run_during_stall_p95_ms"] = Percentile(stallTimes, 0.95);
                    result["run_during_stall_ratio"] = p50 / idle;
                    result["stall_capture"] = s.StallCapture;
                }
            }

            if (measures.Contains("generate"))
            {
                // Alternate 1 client and N concurrent clients (different prompts), medians of the rounds.
                var clientsList = Enumerable.Range(0, s.Clients).Select(_ => NewClient()).ToList();
                var one = new List<double>();
                var many = new List<double>();
                // One untimed round first: the runtime's tiered JIT recompiles the hot decode path in
                // the background during the first seconds (18 % of the CPU samples of a 10 s run), which
                // is start-up, not serving.
                for (int r = -1; r < s.Rounds; r++)
                {
                    if (r == 0)
                    {
                        one.Clear();
                        many.Clear();
                    }
                    var request = Generate(s.GenTokens);
                    var sw = Stopwatch.StartNew();
                    int tokens = ReadGenerate(clientsList[0], request, CancellationToken.None);
                    one.Add(tokens / sw.Elapsed.TotalSeconds);

                    var requests = clientsList.Select(_ => Generate(s.GenTokens)).ToList();
                    sw.Restart();
                    var counts = clientsList.Select((c, i) => ReadGenerateAsync(c, requests[i], CancellationToken.None)).ToArray();
                    Task.WaitAll(counts);
                    many.Add(counts.Sum(t => t.Result) / sw.Elapsed.TotalSeconds);
                }
                double single = Percentile(one, 0.5);
                double concurrent = Percentile(many, 0.5);
                result["generate_1_client_tokens_per_s"] = single;
                result[$"generate_{s.Clients}_clients_tokens_per_s"] = concurrent;
                result["generate_clients_ratio"] = concurrent / single;
            }
            return result;
        }
        finally
        {
            foreach (var c in channels)
                c.Dispose();
        }
    }

    /// <summary>
    /// The same 1 vs N Generate comparison on the service's engine directly (no gRPC, no protos): what the
    /// scheduler achieves, to tell it apart from the transport's per-message cost.
    /// </summary>
    private static Dictionary<string, object?> MeasureEngine(ModelEngine engine, Settings s)
    {
        var rng = new Random(11);
        int vocab = engine.Model.Config.VocabSize;
        GenerateSpec Spec() => new()
        {
            Prompts = [InputSpec.FromIds(Enumerable.Range(0, s.PromptLength).Select(_ => rng.Next(vocab)).ToArray())],
            MaxNewTokens = s.GenTokens,
            StopIds = [],
        };
        static async Task<int> Generate(ModelEngine engine, GenerateSpec spec)
        {
            int tokens = 0;
            await foreach (var output in engine.GenerateAsync(spec).ConfigureAwait(false))
            {
                if (output is GenerateStep step)
                    tokens += step.Ids.Count(id => id >= 0);
            }
            return tokens;
        }
        var one = new List<double>();
        var many = new List<double>();
        for (int r = -1; r < s.Rounds; r++)
        {
            if (r == 0)
            {
                // The first round warmed the JIT up (see the gRPC measure).
                one.Clear();
                many.Clear();
            }
            var spec = Spec();
            var sw = Stopwatch.StartNew();
            int tokens = Generate(engine, spec).GetAwaiter().GetResult();
            one.Add(tokens / sw.Elapsed.TotalSeconds);
            var specs = Enumerable.Range(0, s.Clients).Select(_ => Spec()).ToList();
            sw.Restart();
            var counts = specs.Select(x => Task.Run(() => Generate(engine, x))).ToArray();
            Task.WaitAll(counts);
            many.Add(counts.Sum(t => t.Result) / sw.Elapsed.TotalSeconds);
        }
        double single = Percentile(one, 0.5);
        double concurrent = Percentile(many, 0.5);
        return new()
        {
            ["engine_generate_1_tokens_per_s"] = single,
            [$"engine_generate_{s.Clients}_tokens_per_s"] = concurrent,
            ["engine_generate_ratio"] = concurrent / single,
        };
    }

    private static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted[Math.Min(sorted.Count - 1, (int)(p * sorted.Count))];
    }

    private static void PrintTable(TextWriter stdout, Dictionary<string, object?> r, int clients)
    {
        stdout.WriteLine($"model {r["model"]}, {r["threads"]} threads, Run {r["run_request"]}, {r["iters"]} Runs per measure");
        stdout.WriteLine();
        stdout.WriteLine("| measure | value | ratio | target |");
        stdout.WriteLine("| --- | ---: | ---: | ---: |");
        void Row(string label, string key, string unit, string? ratioKey, string target)
        {
            if (!r.TryGetValue(key, out var v) || v is not double d)
                return;
            string ratio = ratioKey is not null && r.TryGetValue(ratioKey, out var q) && q is double x ? $"{x:F2}" : "";
            stdout.WriteLine($"| {label} | {d:F1} {unit} | {ratio} | {target} |");
        }
        Row("Run p50, idle", "run_idle_p50_ms", "ms", null, "");
        Row($"Run p50, during a {r["long_generate_tokens"]}-token Generate", "run_during_generate_p50_ms", "ms", "run_during_generate_ratio", "≤ 2");
        Row("Run p50, another client not reading its capture stream", "run_during_stall_p50_ms", "ms", "run_during_stall_ratio", "≤ 2");
        Row("Generate tokens/s, 1 client", "generate_1_client_tokens_per_s", "tok/s", null, "");
        Row($"Generate tokens/s, {clients} clients", $"generate_{clients}_clients_tokens_per_s", "tok/s", "generate_clients_ratio", "≥ 4 (stories260K), ≥ 2.5 (gpt2-small)");
        Row("engine only (no gRPC): Generate tokens/s, 1 request", "engine_generate_1_tokens_per_s", "tok/s", null, "");
        Row($"engine only (no gRPC): Generate tokens/s, {clients} requests", $"engine_generate_{clients}_tokens_per_s", "tok/s", "engine_generate_ratio", "");
    }
}
