using System.Collections.Concurrent;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench load</c>: N concurrent clients drive a gateway (and the model service
/// behind it, both in this process on loopback) for a bounded time with a mix of Run, Generate and
/// short analyses. Reports throughput, p50/p99 latency per kind, errors by status, the concurrency
/// held, and memory (resident, managed heap, live TorchSharp tensors) at the start and the end;
/// <c>--soak</c> adds a memory timeline and its trend. Clients send each call once (no retry
/// policy, so every refusal is counted) and after a RESOURCE_EXHAUSTED wait what its
/// <c>grpc-retry-pushback-ms</c> asks before their next call, as a well-behaved client would.
/// </summary>
internal sealed class LoadBenchmark : Benchmark
{
    private sealed record Sample(double Seconds, double RssMiB, double HeapMiB, long Tensors, long Requests);

    private sealed class Stats
    {
        public readonly ConcurrentDictionary<string, LatencyHistogram> Latencies = new();
        public readonly ConcurrentDictionary<string, int> Outcomes = new();
        public readonly ConcurrentDictionary<string, string> FirstError = new();
        public int InFlight;
        public int MaxInFlight;
        public long Completed;

        public void Record(string kind, string status, double ms, string? detail)
        {
            if (detail is not null)
                FirstError.TryAdd($"{kind} {status}", detail);
            Outcomes.AddOrUpdate($"{kind} {status}", 1, (_, n) => n + 1);
            if (status == "OK")
                Latencies.GetOrAdd(kind, _ => new LatencyHistogram()).Add(ms);
            Interlocked.Increment(ref Completed);
        }
    }

    private readonly Option<int> clientsOption = SharedOptions.Clients(16);
    private readonly Option<int?> secondsOption = SharedOptions.OptionalInt("--seconds", 1, "duration (default 20, 300 with --soak)", "S");
    private readonly Option<string> mixOption = new("--mix") { Description = "request kinds and their weights", HelpName = "run=6,generate=3,analysis=1", DefaultValueFactory = _ => "run=6,generate=3,analysis=1" };
    private readonly Option<int> maxConcurrentOption = SharedOptions.Int("--max-concurrent", 32, 1, "requests the model service admits at once", "R");
    private readonly Option<int> admissionWaitOption = SharedOptions.Int("--admission-wait-ms", 100, 0, "how long the model service lets a request wait for admission", "W");
    private readonly Option<int> maxJobsOption = SharedOptions.Int("--max-jobs", 2, 1, "jobs the gateway runs at once", "J");
    private readonly Option<int> maxQueuedOption = SharedOptions.Int("--max-queued", 8, 1, "jobs the gateway queues", "Q");
    private readonly Option<int> retainedJobsOption = SharedOptions.Int("--retained-jobs", 10000, 1, "finished jobs the gateway keeps", "K");
    private readonly Option<string?> modelOption = SharedOptions.Model("the model served (default models/concepts)");
    private readonly Option<bool> soakOption = new("--soak") { Description = "a memory timeline and its trend (longer default duration)" };
    private readonly Option<int?> sampleOption = SharedOptions.OptionalInt("--sample-seconds", 1, "memory sampling period (default 2, 10 with --soak)", "T");

    public LoadBenchmark()
        : base("load", "Mixed load (Run, Generate, analyses) from N clients on a local gateway and model service: throughput, latency, refusals, memory (--soak: over time).")
    {
        mixOption.Validators.Add(r => ParseMix(r.GetValueOrDefault<string>() ?? "", r.AddError));
        Takes(clientsOption, secondsOption, mixOption, maxConcurrentOption, admissionWaitOption, maxJobsOption, maxQueuedOption, retainedJobsOption, modelOption, soakOption, sampleOption);
    }

    public override BenchReport Run(BenchContext context)
    {
        bool json = context.Json, soak = context.Get(soakOption);
        int clients = context.Get(clientsOption);
        int seconds = context.Get(secondsOption) ?? (soak ? 300 : 20);
        int sampleEvery = context.Get(sampleOption) ?? (soak ? 10 : 2);
        string mixText = context.Get(mixOption);
        int maxConcurrent = context.Get(maxConcurrentOption), admissionWait = context.Get(admissionWaitOption);
        int maxJobs = context.Get(maxJobsOption), maxQueued = context.Get(maxQueuedOption), retainedJobs = context.Get(retainedJobsOption);
        var mix = ParseMix(mixText, message => throw new BenchUsageException(message));
        string repo = BenchContext.Repository();
        string model = Path.GetFullPath(context.Get(modelOption) ?? Path.Combine(repo, "models", "concepts"));
        var stdout = context.Out;

        var service = context.StartModelService(model, new Dictionary<string, string?>
        {
            ["ModelService:MaxConcurrentRequests"] = maxConcurrent.ToString(CultureInfo.InvariantCulture),
            ["ModelService:AdmissionWaitMs"] = admissionWait.ToString(CultureInfo.InvariantCulture),
        });
        var gateway = context.StartGateway(service.Urls.First(), Path.Combine(repo, "plugins"), context.TempFolder(), new Dictionary<string, string?>
        {
            ["Worker:MaxConcurrentJobs"] = maxJobs.ToString(CultureInfo.InvariantCulture),
            ["Gateway:MaxQueuedJobs"] = maxQueued.ToString(CultureInfo.InvariantCulture),
            ["Gateway:MaxRetainedJobs"] = retainedJobs.ToString(CultureInfo.InvariantCulture),
        });
        using var channel = InterpMesh.Client.Channels.ForAddress(gateway.Urls.First(), InterpMesh.Client.ChannelRetry.None);
        var models = new Contracts.V1.ModelService.ModelServiceClient(channel);
        var analyses = new AnalysisService.AnalysisServiceClient(channel);
        var stats = new Stats();
        // Warm-up: one of each, so the start figures are taken with everything loaded.
        foreach (var kind in mix.Keys)
            Call(kind, models, analyses, new Random(0), new Stats(), CancellationToken.None).GetAwaiter().GetResult();
        Settle();
        var samples = new List<Sample>();
        var clock = Stopwatch.StartNew();
        // With --soak every sample's heap figure is after a full collection: live memory, not garbage.
        Sample Take() => new(clock.Elapsed.TotalSeconds, Process.GetCurrentProcess().WorkingSet64 / 1048576.0, GC.GetTotalMemory(forceFullCollection: soak) / 1048576.0,
            TorchSharp.torch.Tensor.TotalCount, Interlocked.Read(ref stats.Completed));
        samples.Add(Take());
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
        var workers = Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
        {
            var rng = new Random(c + 1);
            while (!stop.IsCancellationRequested)
                await Call(Pick(mix, rng), models, analyses, rng, stats, stop.Token);
        })).ToArray();
        while (!Task.WaitAll(workers, TimeSpan.FromSeconds(sampleEvery)))
        {
            samples.Add(Take());
            if (soak && !json)
                stdout.WriteLine(Line(samples[^1]));
        }
        double elapsed = clock.Elapsed.TotalSeconds;
        // The end figures after a full collection, like the start ones: what is still alive is held, not garbage.
        Settle();
        samples.Add(Take());
        return Report(soak, clients, elapsed, mixText, maxConcurrent, stats, samples);
    }

    private static void Settle()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    /// <summary>The kind → weight pairs of a <c>--mix</c> value; a bad value goes to <paramref name="error"/> (the parser's, or a throw).</summary>
    private static Dictionary<string, int> ParseMix(string text, Action<string> error)
    {
        var mix = new Dictionary<string, int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var kv = part.Split('=');
            if (kv.Length != 2 || kv[0] is not ("run" or "generate" or "analysis") || !int.TryParse(kv[1], CultureInfo.InvariantCulture, out int w) || w < 0)
            {
                error($"--mix takes kind=weight pairs over run, generate, analysis (e.g. run=6,generate=3,analysis=1), got '{SharedOptions.Clip(part)}'");
                return [];
            }
            mix[kv[0]] = w;
        }
        if (mix.Values.Sum() == 0)
            error("--mix needs at least one positive weight");
        return mix.Where(m => m.Value > 0).ToDictionary();
    }

    private static string Pick(Dictionary<string, int> mix, Random rng)
    {
        int r = rng.Next(mix.Values.Sum());
        foreach (var (kind, w) in mix)
        {
            if ((r -= w) < 0)
                return kind;
        }
        return mix.Keys.First();
    }

    private static readonly string[] Texts = ["the dog is happy . what a", "the cakes are cold . what a", "the team is very kind . what a", "the birds are sad . what a"];

    private static async Task Call(string kind, Contracts.V1.ModelService.ModelServiceClient models, AnalysisService.AnalysisServiceClient analyses, Random rng, Stats stats, CancellationToken stop)
    {
        int now = Interlocked.Increment(ref stats.InFlight);
        int seen;
        while (now > (seen = Volatile.Read(ref stats.MaxInFlight)) && Interlocked.CompareExchange(ref stats.MaxInFlight, now, seen) != seen)
        {
        }
        var clock = Stopwatch.StartNew();
        string status = "OK";
        string? retryAfter = null;
        string? detail = null;
        try
        {
            var options = new CallOptions(deadline: DateTime.UtcNow.AddSeconds(60));
            switch (kind)
            {
                case "run":
                    var run = new RunRequest { Captures = { new Capture { Hooks = { "blocks.*.hook_resid_post" } } }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                    run.Inputs.Add(new Input { Text = Texts[rng.Next(Texts.Length)] });
                    using (var call = models.Run(run, options))
                    {
                        while (await call.ResponseStream.MoveNext(CancellationToken.None))
                        {
                        }
                    }
                    break;
                case "generate":
                    using (var call = models.Generate(new GenerateRequest { Prompts = { new Input { Text = Texts[rng.Next(Texts.Length)] } }, MaxNewTokens = 8 }, options))
                    {
                        while (await call.ResponseStream.MoveNext(CancellationToken.None))
                        {
                        }
                    }
                    break;
                default:
                    var rows = Enumerable.Range(0, 24).Select(i => new { text = Texts[i % 4], label = i % 2 == 0 ? "positive" : "negative" });
                    string parameters = JsonSerializer.Serialize(new { rows, hooks = new[] { "blocks.0.hook_resid_post" }, sparse = new { enabled = false }, c = 1.0 });
                    Job? final = null;
                    using (var call = analyses.RunAnalysis(new AnalysisRequest { Plugin = "probing", ParametersJson = parameters }, options))
                    {
                        while (await call.ResponseStream.MoveNext(CancellationToken.None))
                            final = call.ResponseStream.Current.Finished ?? final;
                    }
                    if (final is null || final.State != JobState.Succeeded)
                    {
                        status = final is null ? "NO_RESULT" : $"job {final.ErrorCode}";
                        detail = final?.Error;
                    }
                    break;
            }
        }
        catch (RpcException e)
        {
            status = e.StatusCode.ToString();
            detail = e.Status.Detail;
            retryAfter = e.Trailers.GetValue(Contracts.RetryPushback.Trailer);
        }
        finally
        {
            Interlocked.Decrement(ref stats.InFlight);
        }
        stats.Record(kind, status, clock.Elapsed.TotalMilliseconds, detail);
        // A well-behaved client waits as told (at most a second here) before its next call.
        if (retryAfter is not null && int.TryParse(retryAfter, CultureInfo.InvariantCulture, out int ms) && ms >= 0)
        {
            try
            {
                await Task.Delay(Math.Min(ms, 1000), stop);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    /// <summary>
    /// Latencies in log-spaced buckets 1 % wide (0.01 ms to ~10 min): constant memory however long the
    /// run, so the soak's memory figures are the services', not the load tool's.
    /// </summary>
    private sealed class LatencyHistogram
    {
        private const double Min = 0.01, Growth = 1.01;
        private readonly long[] counts = new long[(int)Math.Ceiling(Math.Log(6e7 / Min) / Math.Log(Growth)) + 2];
        private long count;
        private double max;
        private readonly Lock gate = new();

        public long Count => Interlocked.Read(ref count);

        public double Max => max;

        public void Add(double ms)
        {
            int i = ms <= Min ? 0 : Math.Min(counts.Length - 1, (int)Math.Ceiling(Math.Log(ms / Min) / Math.Log(Growth)));
            lock (gate)
            {
                counts[i]++;
                count++;
                max = Math.Max(max, ms);
            }
        }

        /// <summary>The p-quantile, as its bucket's upper edge (within 1 %), never above the maximum seen.</summary>
        public double Quantile(double p)
        {
            lock (gate)
            {
                long rank = Math.Max(1, (long)Math.Ceiling(p * count)), seen = 0;
                for (int i = 0; i < counts.Length; i++)
                {
                    if ((seen += counts[i]) >= rank)
                        return Math.Min(max, Min * Math.Pow(Growth, i));
                }
                return max;
            }
        }
    }

    private static string Line(Sample s) =>
        string.Create(CultureInfo.InvariantCulture, $"  t={s.Seconds,6:0}s  requests {s.Requests,8}  RSS {s.RssMiB,7:0.0} MiB  heap {s.HeapMiB,6:0.0} MiB  live tensors {s.Tensors}");

    /// <summary>Least-squares slope of y over x (per minute when x is in seconds).</summary>
    private static double SlopePerMinute(IReadOnlyList<(double X, double Y)> points)
    {
        if (points.Count < 2)
            return 0;
        double mx = points.Average(p => p.X), my = points.Average(p => p.Y);
        double num = points.Sum(p => (p.X - mx) * (p.Y - my)), den = points.Sum(p => (p.X - mx) * (p.X - mx));
        return den == 0 ? 0 : num / den * 60;
    }

    private static BenchReport Report(bool soak, int clients, double elapsed, string mix, int maxConcurrent, Stats stats, List<Sample> samples)
    {
        var kinds = new JsonObject();
        foreach (var (kind, histogram) in stats.Latencies.OrderBy(k => k.Key, StringComparer.Ordinal))
        {
            kinds[kind] = new JsonObject
            {
                ["ok"] = histogram.Count, ["per_second"] = Math.Round(histogram.Count / elapsed, 2),
                ["p50_ms"] = Math.Round(histogram.Quantile(0.5), 1), ["p99_ms"] = Math.Round(histogram.Quantile(0.99), 1), ["max_ms"] = Math.Round(histogram.Max, 1),
            };
        }
        var outcomes = new JsonObject(stats.Outcomes.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => KeyValuePair.Create(o.Key, (JsonNode?)o.Value)));
        var first = samples[0];
        var last = samples[^1];
        // Trend over the second half (after caches and pools have warmed up).
        var half = samples.Where(s => s.Seconds >= elapsed / 2).ToList();
        double rssSlope = SlopePerMinute([.. half.Select(s => (s.Seconds, s.RssMiB))]);
        double tensorSlope = SlopePerMinute([.. half.Select(s => (s.Seconds, (double)s.Tensors))]);
        long ok = stats.Latencies.Values.Sum(h => h.Count);
        var result = new JsonObject
        {
            ["clients"] = clients, ["seconds"] = Math.Round(elapsed, 1), ["mix"] = mix, ["model_service_max_concurrent"] = maxConcurrent,
            ["concurrency_held"] = stats.MaxInFlight, ["requests"] = stats.Completed, ["ok_per_second"] = Math.Round(ok / elapsed, 2),
            ["by_kind"] = kinds, ["outcomes"] = outcomes,
            ["first_errors"] = new JsonObject(stats.FirstError.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => KeyValuePair.Create(o.Key, (JsonNode?)o.Value))),
            ["memory"] = new JsonObject
            {
                ["rss_mib_start"] = Math.Round(first.RssMiB, 1), ["rss_mib_end"] = Math.Round(last.RssMiB, 1), ["rss_mib_max"] = Math.Round(samples.Max(s => s.RssMiB), 1),
                ["heap_mib_start"] = Math.Round(first.HeapMiB, 1), ["heap_mib_end"] = Math.Round(last.HeapMiB, 1),
                ["live_tensors_start"] = first.Tensors, ["live_tensors_end"] = last.Tensors,
                ["rss_mib_per_minute_second_half"] = Math.Round(rssSlope, 2), ["live_tensors_per_minute_second_half"] = Math.Round(tensorSlope, 2),
            },
        };
        if (soak)
            result["timeline"] = new JsonArray([.. samples.Select(s => (JsonNode)new JsonObject { ["t"] = Math.Round(s.Seconds), ["requests"] = s.Requests, ["rss_mib"] = Math.Round(s.RssMiB, 1), ["live_tensors"] = s.Tensors })]);
        var values = result.ToDictionary(kv => kv.Key, kv => (object?)kv.Value);
        return new BenchReport(values, stdout =>
        {
            var c = CultureInfo.InvariantCulture;
            stdout.WriteLine(string.Create(c, $"load: {clients} clients for {elapsed:0} s (mix {mix}; model service admits {maxConcurrent} at once); concurrency held {stats.MaxInFlight}"));
            stdout.WriteLine(string.Create(c, $"  {stats.Completed} requests, {ok} ok ({ok / elapsed:0.0}/s)"));
            foreach (var (kind, node) in kinds)
                stdout.WriteLine(string.Create(c, $"  {kind,-9} ok {node!["ok"],6}  {node["per_second"],7}/s  p50 {node["p50_ms"],7} ms  p99 {node["p99_ms"],7} ms  max {node["max_ms"],7} ms"));
            stdout.WriteLine("  outcomes: " + string.Join(", ", outcomes.Select(o => $"{o.Key} {o.Value}")));
            foreach (var (key, message) in stats.FirstError.OrderBy(o => o.Key, StringComparer.Ordinal))
                stdout.WriteLine($"  first {key}: {message}");
            stdout.WriteLine(string.Create(c, $"  memory: RSS {first.RssMiB:0} → {last.RssMiB:0} MiB (max {samples.Max(s => s.RssMiB):0}), heap {first.HeapMiB:0} → {last.HeapMiB:0} MiB, live tensors {first.Tensors} → {last.Tensors}; second-half trend {rssSlope:0.00} MiB/min, {tensorSlope:0.00} tensors/min"));
        });
    }
}
