using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Local;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Hosting;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Execution;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Cli.Bench;

/// <summary>
/// <c>interpmesh bench retrieval</c> (run from a checkout): needle-in-a-haystack trials of the
/// retrieval-heads plugin on stories260K at several context lengths, through the gateway: trials
/// per second, and the attention bytes captured per decoding step (what the plugin keeps), which
/// must grow linearly with the context.
/// </summary>
internal static class RetrievalBenchmark
{
    public static int Run(CliArgs args, TextWriter stdout)
    {
        int threads = TorchRuntime.Initialize(args.Int("threads", min: 1));
        int trials = args.Int("trials", min: 1) ?? 4;
        bool json = args.Flag("json");
        args.RejectUnknown("bench retrieval");
        string root = BenchMesh.Repository();
        string dir = Path.Combine(Path.GetTempPath(), "interpmesh-bench-" + Guid.NewGuid().ToString("N"));
        long captured = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "InterpMesh.ModelService" && instrument.Name == "interpmesh.activations.bytes")
                l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref captured, value));
        listener.Start();

        var service = BenchMesh.StartModelService(Path.Combine(root, "models", "stories260K", "stories260K.bin"), threads);
        var gateway = BenchMesh.StartGateway(service.Urls.First(), Path.Combine(root, "plugins"), dir);
        var rows = new List<Dictionary<string, object?>>();
        try
        {
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
        }
        finally
        {
            BenchMesh.Stop(gateway, service);
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
        if (json)
            JsonOutput.Write(stdout, new Dictionary<string, object?> { ["threads"] = threads, ["runs"] = rows });
        else
            foreach (var r in rows)
                stdout.WriteLine("  " + string.Join("  ", r.Select(kv => $"{kv.Key}={kv.Value:0.###}")));
        return 0;
    }
}
