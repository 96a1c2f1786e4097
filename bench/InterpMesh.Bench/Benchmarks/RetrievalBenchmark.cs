using System.CommandLine;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench retrieval</c> (run from a checkout): needle-in-a-haystack trials of the
/// retrieval-heads plugin on stories260K at several context lengths, through the gateway: trials
/// per second, and the attention bytes captured per decoding step (what the plugin keeps), which
/// must grow linearly with the context.
/// </summary>
internal sealed class RetrievalBenchmark : Benchmark
{
    private readonly Option<int> trialsOption = SharedOptions.Int("--trials", 4, 1, "needle depths per context length");

    public RetrievalBenchmark()
        : base("retrieval", "Retrieval-head detection through the gateway on stories260K: trials/s and attention bytes per step (run from a checkout).") =>
        Takes(trialsOption);

    public override BenchReport Run(BenchContext context)
    {
        int trials = context.Get(trialsOption);
        int threads = context.Threads;
        string root = BenchContext.Repository();
        long captured = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "InterpMesh.ModelService" && instrument.Name == "interpmesh.activations.bytes")
                l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref captured, value));
        listener.Start();

        var service = context.StartModelService(Path.Combine(root, "models", "stories260K", "stories260K.bin"));
        var gateway = context.StartGateway(service.Urls.First(), Path.Combine(root, "plugins"), context.TempFolder());
        var rows = new List<Dictionary<string, object?>>();
        using var channel = InterpMesh.Client.Channels.ForAddress(gateway.Urls.First());
        var client = new AnalysisService.AnalysisServiceClient(channel);
        const string haystack = "Lily went to the park with her mom. They saw a big tree and a little bird. The bird sang a happy song. Lily smiled and clapped her hands. ";
        const int answerTokens = 8;
        foreach (int length in new[] { 64, 128, 256, 480 })
        {
            long before = Interlocked.Read(ref captured);
            var sw = Stopwatch.StartNew();
            using var call = client.RunAnalysis(new AnalysisRequest
            {
                Plugin = "retrieval-heads",
                ParametersJson = JsonSerializer.Serialize(new
                {
                    analyses = new[] { "retrieval" },
                    text = new { needle = "The magic cat was named Tom.", question = "The magic cat was named", haystack = string.Concat(Enumerable.Repeat(haystack, 40)), lengths = new[] { length }, max_new_tokens = answerTokens },
                    depths = Enumerable.Range(0, trials).Select(i => 100.0 * i / Math.Max(1, trials - 1)),
                    save_trials = false,
                }),
            });
            Job? final = null;
            while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                final = call.ResponseStream.Current.Finished ?? final;
            double seconds = sw.Elapsed.TotalSeconds;
            if (final?.State != JobState.Succeeded)
                throw new InvalidOperationException($"retrieval trials at {length} tokens failed: {final?.Error}");
            long bytes = Interlocked.Read(ref captured) - before;
            rows.Add(new()
            {
                ["context_tokens"] = length,
                ["trials"] = trials,
                ["trials_per_s"] = trials / seconds,
                ["captured_bytes_per_step"] = bytes / (double)(trials * answerTokens),
                ["captured_bytes_per_step_per_context_token"] = bytes / (double)(trials * answerTokens) / length,
                ["recalled"] = JsonNode.Parse(final.Result.SummaryJson)!["trials_recalled"]!.GetValue<int>(),
            });
        }
        return new BenchReport(new Dictionary<string, object?> { ["threads"] = threads, ["runs"] = rows }, stdout =>
        {
            foreach (var r in rows)
                stdout.WriteLine("  " + string.Join("  ", r.Select(kv => $"{kv.Key}={kv.Value:0.###}")));
        });
    }
}
