using System.CommandLine;
using System.Diagnostics;
using InterpMesh.Bench.Harness;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench patching</c>: an activation-patching sweep — <c>hook_resid_pre</c> of every
/// layer at every position of one corrupted prompt, each (layer, position) patched with its own
/// clean vector in its own row, rows batched per request up to the engine's batch limit, last
/// logits — through two engines in this process on one random-weights model: one with prefix
/// reuse, one without. Repetitions alternate between the two (and which goes first); the report
/// gives each one's median sweep time, their ratio, the tokens each computed, and the largest
/// logit difference between them.
/// </summary>
internal sealed class PatchingBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> seqOption = SharedOptions.Seq(64, "prompt tokens: the sweep patches each of these positions");
    private readonly Option<int> batchOption = SharedOptions.Batch(64, "rows per request (the engine's MaxBatch is set to it)");
    private readonly Option<int> warmupOption = SharedOptions.Warmup(1);
    private readonly Option<int> itersOption = SharedOptions.Iters(3, "timed sweeps per engine, interleaved (medians are reported)");

    public PatchingBenchmark()
        : base("patching", "A hook_resid_pre layer × position patching sweep with prefix reuse and without, side by side in one process.") =>
        Takes(presetOption, seqOption, batchOption, warmupOption, itersOption);

    private sealed class Counting : IEngineObserver
    {
        public long Tokens;
        public long Forwards;

        public void Forward(int rows, int tokens, double seconds)
        {
            Interlocked.Add(ref Tokens, tokens);
            Interlocked.Increment(ref Forwards);
        }
    }

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption)!;
        int seq = context.Get(seqOption), batch = context.Get(batchOption), warmup = context.Get(warmupOption), iters = context.Get(itersOption);
        int threads = context.Threads;
        var config = Presets.Config(preset);
        if (seq > config.ContextLength)
            throw new BenchUsageException($"--seq {seq} exceeds the {preset} context length of {config.ContextLength}");

        using var model = new LoadedModel(Presets.CreateRandom(config, seed: 1234), null, $"{preset} (random)");
        var rng = new Random(7);
        var prompt = Enumerable.Range(0, seq).Select(_ => rng.Next(config.VocabSize)).ToArray();
        // Position-major: the layers of one position sit in adjacent rows (one request covers a few positions).
        var combos = (from p in Enumerable.Range(0, seq) from l in Enumerable.Range(0, config.NLayers) select (Layer: l, Position: p)).ToList();
        using var generator = new Generator(11);
        using var values = randn([combos.Count, config.DModel], generator: generator);
        var requests = combos.Chunk(batch).Select((chunk, c) => new RunSpec
        {
            Inputs = chunk.Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions = chunk.Select((combo, i) => new Intervention($"blocks.{combo.Layer}.hook_resid_pre", InterventionOp.Set,
                values[c * batch + i], Positions: [combo.Position], Rows: [i])).ToList(),
            Logits = LogitsMode.Last,
        }).ToList();

        var observers = new[] { new Counting(), new Counting() };
        using var reuse = new ModelEngine(model, new EngineOptions { MaxBatch = batch, BatchMaxRows = batch, BatchWindowMs = 0, PrefixReuse = true }, observers[0]);
        using var plain = new ModelEngine(model, new EngineOptions { MaxBatch = batch, BatchMaxRows = batch, BatchWindowMs = 0, PrefixReuse = false }, observers[1]);
        var engines = new[] { reuse, plain };
        var times = new[] { new List<double>(), new List<double>() };
        var tokens = new long[2];
        var forwards = new long[2];
        Tensor?[] logits = [null, null];
        for (int rep = 0; rep < warmup + iters; rep++)
        {
            // Alternate which engine goes first, so neither always runs on a warmer (or busier) machine.
            foreach (int e in rep % 2 == 0 ? new[] { 0, 1 } : new[] { 1, 0 })
            {
                long tokensBefore = observers[e].Tokens, forwardsBefore = observers[e].Forwards;
                var sw = Stopwatch.StartNew();
                var outcomes = Sweep(engines[e], requests);
                sw.Stop();
                if (rep < warmup)
                    continue;
                times[e].Add(sw.Elapsed.TotalSeconds);
                tokens[e] = observers[e].Tokens - tokensBefore;
                forwards[e] = observers[e].Forwards - forwardsBefore;
                if (logits[e] is null)
                {
                    logits[e] = cat(outcomes.Select(o => o.Logits!.ToTensor()).ToArray(), 0);
                    logits[e]!.DetachFromDisposeScope();
                }
            }
            if (!context.Json)
                context.Out.WriteLine(rep < warmup ? $"warm-up sweep {rep + 1} done" : $"sweep {rep - warmup + 1}: reuse {times[0][^1]:F2} s, plain {times[1][^1]:F2} s");
        }
        double maxDiff = (logits[0]! - logits[1]!).abs().max().item<float>();
        logits[0]!.Dispose();
        logits[1]!.Dispose();
        double Median(List<double> xs)
        {
            var sorted = xs.Order().ToList();
            return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
        }
        double withReuse = Median(times[0]), without = Median(times[1]);
        var report = new Dictionary<string, object?>
        {
            ["preset"] = preset,
            ["seq"] = seq,
            ["layers"] = config.NLayers,
            ["rows"] = combos.Count,
            ["requests"] = requests.Count,
            ["rows_per_request"] = batch,
            ["threads"] = threads,
            ["iters"] = iters,
            ["sweep_seconds_with_reuse"] = withReuse,
            ["sweep_seconds_without_reuse"] = without,
            ["ratio_with_vs_without"] = withReuse / without,
            ["sweep_seconds_with_reuse_all"] = times[0],
            ["sweep_seconds_without_reuse_all"] = times[1],
            ["tokens_with_reuse"] = tokens[0],
            ["tokens_without_reuse"] = tokens[1],
            ["forwards_with_reuse"] = forwards[0],
            ["forwards_without_reuse"] = forwards[1],
            ["max_abs_logit_diff"] = maxDiff,
        };
        return new BenchReport(report, stdout => stdout.WriteLine(
            $"{preset} hook_resid_pre sweep {config.NLayers} layers × {seq} positions ({combos.Count} rows, {requests.Count} requests of ≤ {batch}), {threads} threads: " +
            $"with prefix reuse {withReuse:F2} s ({tokens[0]} tokens, {forwards[0]} forwards), without {without:F2} s ({tokens[1]} tokens, {forwards[1]} forwards), " +
            $"ratio {withReuse / without:F3} (median of {iters}); max |Δlogit| {maxDiff:G3}"));
    }

    /// <summary>The sweep's requests one after another, as a client waiting for each answer would send them.</summary>
    private static List<RunOutcome> Sweep(ModelEngine engine, List<RunSpec> requests)
    {
        var outcomes = new List<RunOutcome>();
        foreach (var spec in requests)
        {
            outcomes.Add(Task.Run(async () =>
            {
                RunOutcome? outcome = null;
                await foreach (var o in engine.RunAsync(spec))
                    outcome = o as RunOutcome ?? outcome;
                return outcome ?? throw new InvalidOperationException("the engine answered a sweep request without an outcome");
            }).GetAwaiter().GetResult());
        }
        return outcomes;
    }
}
