using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench serving</c>: one model service on loopback (or <c>--server URL</c>), plain gRPC
/// clients, one run. Measures a small Run's p50 latency idle, while another client runs a long
/// Generate and while another client holds a capture stream open without reading; and Generate
/// tokens/s with 1 client against N concurrent clients.
/// </summary>
internal sealed class ServingBenchmark : Benchmark
{
    private static readonly string[] AllMeasures = ["idle", "during-generate", "during-stall", "generate", "engine"];

    private readonly Option<string?> modelOption = SharedOptions.Model("the model served (default models/stories260K/stories260K.bin)");
    private readonly Option<string?> presetOption = SharedOptions.Preset(null);
    private readonly Option<string?> saveModelOption = new("--save-model") { Description = "keep the --preset's random checkpoint in DIR (reused when there), so another build can serve the same weights", HelpName = "DIR" };
    private readonly Option<string?> serverOption = new("--server") { Description = "measure a running model service instead of starting one", HelpName = "URL" };
    private readonly Option<int> itersOption = SharedOptions.Iters(50, "Runs per measure");
    private readonly Option<int> runSeqOption = SharedOptions.Int("--run-seq", 16, 1, "tokens of the timed Run", "T");
    private readonly Option<int> longTokensOption = SharedOptions.Int("--long-tokens", 400, 1, "tokens of the long Generate running meanwhile");
    private readonly Option<int> genTokensOption = SharedOptions.Int("--gen-tokens", 128, 1, "tokens per Generate in the 1 vs N clients measure");
    private readonly Option<int> promptLengthOption = SharedOptions.Int("--prompt-length", 8, 1, "prompt tokens per Generate", "P");
    private readonly Option<int> clientsOption = SharedOptions.Clients(8);
    private readonly Option<int> roundsOption = SharedOptions.Int("--rounds", 5, 1, "rounds of 1 vs N clients (medians)", "R");
    private readonly Option<string> stallCaptureOption = new("--stall-capture") { Description = "hooks the stalled client asks for", HelpName = "GLOB", DefaultValueFactory = _ => "*" };
    private readonly Option<int?> windowOption = SharedOptions.BatchWindowMs();
    private readonly Option<string> onlyOption = new("--only") { Description = $"the measures to take, comma-separated: {string.Join(", ", AllMeasures)}", HelpName = "MEASURES", DefaultValueFactory = _ => string.Join(',', AllMeasures) };

    public ServingBenchmark()
        : base("serving", "The engine's serving figures on one model service: Run latency idle, during a long Generate and beside a stalled stream; Generate tokens/s, 1 vs N clients.")
    {
        onlyOption.Validators.Add(r =>
        {
            foreach (var m in Measures(r.GetValueOrDefault<string>() ?? ""))
            {
                if (!AllMeasures.Contains(m))
                    r.AddError($"--only takes a comma-separated list of {string.Join(", ", AllMeasures)}; got '{SharedOptions.Clip(m)}'");
            }
        });
        Takes(modelOption, presetOption, saveModelOption, serverOption, itersOption, runSeqOption, longTokensOption, genTokensOption, promptLengthOption,
            clientsOption, roundsOption, stallCaptureOption, windowOption, onlyOption);
    }

    private static string[] Measures(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    public override BenchReport Run(BenchContext context)
    {
        string? preset = context.Get(presetOption);
        string? modelPath = context.Get(modelOption);
        string? server = context.Get(serverOption);
        string? saveModel = context.Get(saveModelOption);
        int? window = context.Get(windowOption);
        var measures = Measures(context.Get(onlyOption));
        if (preset is not null && modelPath is not null)
            throw new BenchUsageException("give --model PATH or --preset NAME, not both");
        if (saveModel is not null && preset is null)
            throw new BenchUsageException("--save-model DIR keeps the random checkpoint of a --preset; give --preset NAME");
        if (server is not null && (preset is not null || modelPath is not null || window is not null))
            throw new BenchUsageException("--server measures a running service; it takes no --model, --preset or --batch-window-ms");
        int threads = context.Threads;

        string source;
        WebApplication? app = null;
        if (server is null)
        {
            if (preset is not null)
            {
                // --save-model keeps the checkpoint, so another build (`interpmesh serve --model DIR`) can serve the same weights.
                modelPath = saveModel ?? context.TempFolder();
                if (!File.Exists(Path.Combine(modelPath, "config.json")))
                    BenchContext.SaveRandomModel(preset, modelPath);
                source = $"preset {preset} (random weights)";
            }
            else
            {
                modelPath ??= Path.Combine(BenchContext.Repository(), "models", "stories260K", "stories260K.bin");
                source = modelPath;
            }
            app = context.StartModelService(modelPath, window is null ? null : new Dictionary<string, string?> { ["ModelService:BatchWindowMs"] = window.Value.ToString(CultureInfo.InvariantCulture) });
            server = app.Urls.First();
        }
        else
        {
            source = server;
        }
        var settings = new Settings(context.Get(itersOption), context.Get(runSeqOption), context.Get(longTokensOption), context.Get(genTokensOption),
            context.Get(promptLengthOption), context.Get(clientsOption), context.Get(roundsOption), context.Get(stallCaptureOption));
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
            ["run_request"] = $"1x{settings.RunSeq}, last logits",
            ["iters"] = settings.Iters,
            ["long_generate_tokens"] = settings.LongTokens,
            ["generate_tokens"] = settings.GenTokens,
            ["prompt_length"] = settings.PromptLength,
            ["clients"] = settings.Clients,
            ["rounds"] = settings.Rounds,
        };
        foreach (var (k, v) in result)
            report[k] = v;
        return new BenchReport(report, stdout => PrintTable(stdout, report, settings.Clients));
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
                throw new BenchUsageException($"--prompt-length + --long-tokens must fit the model's context of {info.ContextLength}");

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
                // One untimed round first: the runtime's tiered JIT recompiles the hot decode path in
                // the background during the first seconds (18 % of the CPU samples of a 10 s run), which
                // is start-up, not serving.
                var (single, concurrent) = OneVersusMany(s.Rounds,
                    () =>
                    {
                        var request = Generate(s.GenTokens);
                        return () => ReadGenerate(clientsList[0], request, CancellationToken.None);
                    },
                    () =>
                    {
                        var requests = clientsList.Select(_ => Generate(s.GenTokens)).ToList();
                        return () => clientsList.Select((c, i) => ReadGenerateAsync(c, requests[i], CancellationToken.None)).ToArray();
                    });
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
        // The first round warms the JIT up, as in the gRPC measure.
        var (single, concurrent) = OneVersusMany(s.Rounds,
            () =>
            {
                var spec = Spec();
                return () => Generate(engine, spec).GetAwaiter().GetResult();
            },
            () =>
            {
                var specs = Enumerable.Range(0, s.Clients).Select(_ => Spec()).ToList();
                return () => specs.Select(x => Task.Run(() => Generate(engine, x))).ToArray();
            });
        return new()
        {
            ["engine_generate_1_tokens_per_s"] = single,
            [$"engine_generate_{s.Clients}_tokens_per_s"] = concurrent,
            ["engine_generate_ratio"] = concurrent / single,
        };
    }

    /// <summary>
    /// Generate tokens/s of one generation against N concurrent ones, alternating for <paramref name="rounds"/>
    /// rounds after one untimed round, medians. Each <c>prepare</c> builds its requests outside the timed part
    /// and returns what starts them.
    /// </summary>
    private static (double One, double Many) OneVersusMany(int rounds, Func<Func<int>> prepareOne, Func<Func<Task<int>[]>> prepareMany)
    {
        var one = new List<double>();
        var many = new List<double>();
        for (int r = -1; r < rounds; r++)
        {
            var runOne = prepareOne();
            var sw = Stopwatch.StartNew();
            double oneRate = runOne() / sw.Elapsed.TotalSeconds;
            var runMany = prepareMany();
            sw.Restart();
            var counts = runMany();
            Task.WaitAll(counts);
            double manyRate = counts.Sum(t => t.Result) / sw.Elapsed.TotalSeconds;
            if (r >= 0)
            {
                one.Add(oneRate);
                many.Add(manyRate);
            }
        }
        return (Percentile(one, 0.5), Percentile(many, 0.5));
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
