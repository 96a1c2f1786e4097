using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.ModelService.Configuration;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using Microsoft.Extensions.Configuration;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Tests;

/// <summary>
/// Prefix reuse for patching sweeps: the same requests through an engine with
/// <see cref="EngineOptions.PrefixReuse"/> on and one with it off give the same logits (max abs
/// difference ≤ 1e-4) and the same receipts (equal element counts, L2 within 1e-4 relative); the
/// observer's token counts show whether the prefix was really shared (T + Σ_r (T − p_r)) or the
/// plain forward ran (N·T). Models: the GPT-2 fixture (learned positions) and stories260K (rotary).
/// </summary>
public sealed class PrefixReuseTests : IDisposable
{
    private const double Tolerance = 1e-4;

    private readonly LoadedModel gpt2;
    private readonly LoadedModel stories;

    public PrefixReuseTests()
    {
        InterpMesh.Runtime.Execution.TorchRuntime.Initialize();
        gpt2 = ModelLoader.Load(RepoPaths.Fixture("gpt2-tiny"));
        stories = ModelLoader.Load(RepoPaths.Models("stories260K/stories260K.bin"));
    }

    public void Dispose()
    {
        gpt2.Dispose();
        stories.Dispose();
    }

    private sealed class Counting : IEngineObserver
    {
        public readonly List<(int Rows, int Tokens)> Forwards = [];

        public void Forward(int rows, int tokens, double seconds)
        {
            lock (Forwards)
                Forwards.Add((rows, tokens));
        }
    }

    private static int[] Prompt(LoadedModel model, int length, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => 1 + rng.Next(model.Config.VocabSize - 1)).ToArray();
    }

    private static Tensor Random(int seed, params long[] shape)
    {
        using var g = new Generator((ulong)seed);
        var t = randn(shape, generator: g);
        t.DetachFromDisposeScope();
        return t;
    }

    private static async Task<(RunOutcome Outcome, List<(int Rows, int Tokens)> Forwards)> RunAsync(LoadedModel model, bool reuse, RunSpec spec)
    {
        var observer = new Counting();
        using var engine = new ModelEngine(model, new EngineOptions { BatchWindowMs = 0, PrefixReuse = reuse }, observer);
        RunOutcome? outcome = null;
        await foreach (var o in engine.RunAsync(spec).WithCancellation(new CancellationTokenSource(EngineTests.CallDeadline).Token))
            outcome = o as RunOutcome ?? outcome;
        return (outcome!, observer.Forwards);
    }

    /// <summary>Runs <paramref name="spec"/> with and without reuse, checks both agree, and returns the forwards of the reusing engine.</summary>
    private static async Task<List<(int Rows, int Tokens)>> SameAnswerAsync(LoadedModel model, RunSpec spec) =>
        (await SameOutcomeAsync(model, spec)).Forwards;

    private static async Task<(RunOutcome Outcome, List<(int Rows, int Tokens)> Forwards)> SameOutcomeAsync(LoadedModel model, RunSpec spec)
    {
        var (reused, forwards) = await RunAsync(model, true, spec);
        var (plain, plainForwards) = await RunAsync(model, false, spec);
        // Without reuse: one forward of every row.
        Assert.Equal([(spec.Inputs.Count, spec.Inputs.Sum(i => i.Ids!.Count))], plainForwards);
        if (spec.TopK > 0)
        {
            Assert.Equal(plain.TopKIds!.ToTensor().data<long>().ToArray(), reused.TopKIds!.ToTensor().data<long>().ToArray());
            AssertClose(plain.TopKValues!, reused.TopKValues!);
        }
        else if (spec.Logits != LogitsMode.None)
        {
            AssertClose(plain.Logits!, reused.Logits!);
        }
        if (spec.Loss)
            Assert.Equal(plain.Loss!.Value, reused.Loss!.Value, Tolerance);
        Assert.Equal(plain.Tokens.ToTensor().data<long>().ToArray(), reused.Tokens.ToTensor().data<long>().ToArray());
        Assert.Equal(plain.Receipts.Count, reused.Receipts.Count);
        for (int i = 0; i < plain.Receipts.Count; i++)
        {
            Assert.Equal(plain.Receipts[i].Hooks, reused.Receipts[i].Hooks);
            Assert.True(plain.Receipts[i].Elements == reused.Receipts[i].Elements, $"receipt {i}: {reused.Receipts[i].Elements} elements with reuse, {plain.Receipts[i].Elements} without (L2 {reused.Receipts[i].L2} vs {plain.Receipts[i].L2})");
            Assert.True(Math.Abs(plain.Receipts[i].L2 - reused.Receipts[i].L2) <= Tolerance * Math.Max(1, plain.Receipts[i].L2),
                $"receipt {i}: L2 {reused.Receipts[i].L2} with reuse, {plain.Receipts[i].L2} without");
        }
        return (reused, forwards);
    }

    private static void AssertClose(HostTensor expected, HostTensor actual)
    {
        Assert.Equal(expected.Shape, actual.Shape);
        using var e = expected.ToTensor();
        using var a = actual.ToTensor();
        double diff = (e - a).abs().max().item<float>();
        Assert.True(diff <= Tolerance, $"max abs logit difference {diff} > {Tolerance}");
        // Not vacuous: the logits are not all equal.
        Assert.True(e.std().item<float>() > 1e-3);
    }

    private static void AssertReused(List<(int Rows, int Tokens)> forwards, int length, IEnumerable<int> starts)
    {
        int expected = length + starts.Sum(p => length - p);
        Assert.True(forwards.Count > 1, "a single forward ran: no prefix reuse");
        Assert.Equal(expected, forwards.Sum(f => f.Tokens));
    }

    private static void AssertPlain(List<(int Rows, int Tokens)> forwards, RunSpec spec) =>
        Assert.Equal([(spec.Inputs.Count, spec.Inputs.Sum(i => i.Ids!.Count))], forwards);

    /// <summary>Row i of a layer × position sweep: SET blocks.L.hook_resid_pre at position p, on row i only.</summary>
    private static (RunSpec Spec, List<int> Starts) ResidSweep(LoadedModel model, int length, int[] positions, int topK = 0)
    {
        var prompt = Prompt(model, length, 11);
        var combos = (from p in positions from l in Enumerable.Range(0, model.Config.NLayers) select (l, p)).ToList();
        var interventions = combos.Select((c, i) => new Intervention($"blocks.{c.l}.hook_resid_pre", InterventionOp.Set,
            Random(100 + i, model.Config.DModel), Positions: [c.p], Rows: [i])).ToList();
        var spec = new RunSpec
        {
            Inputs = combos.Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions = interventions,
            Logits = LogitsMode.Last,
            TopK = topK,
        };
        return (spec, combos.Select(c => c.p).ToList());
    }

    [Fact]
    public async Task A_resid_pre_layer_by_position_sweep_reuses_the_prefix_and_gives_the_plain_forwards_answer()
    {
        const int length = 12;
        var (spec, starts) = ResidSweep(gpt2, length, [1, 3, 6, 11]);
        var forwards = await SameAnswerAsync(gpt2, spec);
        AssertReused(forwards, length, starts);
        // One prefix row, then one forward per distinct position.
        Assert.Equal(5, forwards.Count);
        Assert.Equal((1, length), forwards[0]);
    }

    [Fact]
    public async Task A_sweep_that_asks_for_a_gradient_runs_as_one_forward_under_autograd()
    {
        // The same sweep with a gradient: it needs the whole graph of one forward, so it never takes
        // the reuse path — one forward of all rows — and its metric equals the engine's without reuse.
        const int length = 12;
        var (sweep, _) = ResidSweep(gpt2, length, [3, 6]);
        var spec = new RunSpec
        {
            Inputs = sweep.Inputs,
            Interventions = sweep.Interventions,
            Logits = LogitsMode.Last,
            Gradient = new GradientSpec { Metric = GradientMetric.Logit, Tokens = [5], Hooks = ["blocks.0.hook_resid_post"] },
        };
        var (withReuse, forwards) = await RunAsync(gpt2, reuse: true, spec);
        var (without, _) = await RunAsync(gpt2, reuse: false, spec);
        Assert.Equal([(sweep.Inputs.Count, sweep.Inputs.Count * length)], forwards);
        Assert.NotNull(withReuse.Metric);
        Assert.Equal(without.Metric!.Value, withReuse.Metric!.Value, 6);
    }

    [Fact]
    public async Task A_group_whose_cache_would_exceed_the_limit_runs_in_chunks_of_rows()
    {
        const int length = 12;
        var (spec, starts) = ResidSweep(gpt2, length, [2, 7]);
        var c = gpt2.Config;
        long perRow = (long)length * c.NLayers * 2 * c.NKvHeads * c.DHead * 4;
        var saved = InterpMesh.Engine.Scheduling.PrefixReuse.MaxCacheBytes;
        // Room for one row's cache: each group of 2 rows (the 2 layers of a position) runs row by row.
        InterpMesh.Engine.Scheduling.PrefixReuse.MaxCacheBytes = perRow;
        try
        {
            var forwards = await SameAnswerAsync(gpt2, spec);
            AssertReused(forwards, length, starts);
            Assert.Equal([(1, length), (1, length - 2), (1, length - 2), (1, length - 7), (1, length - 7)], forwards);
        }
        finally
        {
            InterpMesh.Engine.Scheduling.PrefixReuse.MaxCacheBytes = saved;
        }
    }

    [Fact]
    public async Task A_sweep_over_rotary_positions_gives_the_plain_forwards_answer()
    {
        const int length = 10;
        var (spec, starts) = ResidSweep(stories, length, [2, 5, 9], topK: 5);
        var forwards = await SameAnswerAsync(stories, spec);
        AssertReused(forwards, length, starts);
    }

    [Fact]
    public async Task Per_head_hook_z_interventions_with_positions_give_the_plain_forwards_answer()
    {
        const int length = 9;
        var prompt = Prompt(gpt2, length, 3);
        int dHead = gpt2.Config.DHead;
        var spec = new RunSpec
        {
            Inputs = Enumerable.Range(0, 4).Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions =
            [
                new Intervention("blocks.0.attn.hook_z", InterventionOp.Set, Random(1, dHead), Heads: [1], Positions: [4], Rows: [0]),
                new Intervention("blocks.1.attn.hook_z", InterventionOp.Add, Random(2, 1, 1, gpt2.Config.NHeads, dHead), Heads: [0, 3], Positions: [6, 7], Rows: [1, 2]),
                new Intervention("blocks.1.attn.hook_z", InterventionOp.ZeroAblate, Heads: [2], Positions: [5], Rows: [2, 3]),
            ],
            Logits = LogitsMode.Last,
        };
        var forwards = await SameAnswerAsync(gpt2, spec);
        // Row 0 from 4, row 1 from 6, rows 2 and 3 from 5.
        AssertReused(forwards, length, [4, 6, 5, 5]);
    }

    [Fact]
    public async Task Attention_pattern_interventions_at_query_positions_give_the_plain_forwards_answer()
    {
        const int length = 8;
        var prompt = Prompt(gpt2, length, 4);
        // A pattern row that attends to the first key only (zero elsewhere, so elements beyond the
        // query stay unchanged: the receipts' counts are exact).
        var first = zeros(length);
        first[0] = tensor(1f);
        first.DetachFromDisposeScope();
        var spec = new RunSpec
        {
            Inputs = Enumerable.Range(0, 3).Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions =
            [
                new Intervention("blocks.0.attn.hook_pattern", InterventionOp.Set, first, Heads: [0, 2], Positions: [3], Rows: [0]),
                new Intervention("blocks.1.attn.hook_pattern", InterventionOp.Scale, Scale: 0.5, Positions: [6], Rows: [1, 2]),
                new Intervention("blocks.1.attn.hook_attn_scores", InterventionOp.Add, Random(5, 1, gpt2.Config.NHeads, 1, length), Positions: [7], Rows: [2]),
            ],
            Logits = LogitsMode.Last,
        };
        var (outcome, forwards) = await SameOutcomeAsync(gpt2, spec);
        AssertReused(forwards, length, [3, 6, 6]);
        // The scores' Add changes query 7 of row 2 only: every head, every key (masked scores stay −∞
        // and do not count), with a finite norm.
        Assert.Equal(gpt2.Config.NHeads * length, outcome.Receipts[2].Elements);
        Assert.True(double.IsFinite(outcome.Receipts[2].L2) && outcome.Receipts[2].L2 > 0);
    }

    [Fact]
    public async Task Untouched_rows_take_the_prefix_forwards_answer()
    {
        const int length = 10;
        var prompt = Prompt(gpt2, length, 5);
        var spec = new RunSpec
        {
            Inputs = Enumerable.Range(0, 6).Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions =
            [
                new Intervention("blocks.1.hook_resid_pre", InterventionOp.Set, Random(6, gpt2.Config.DModel), Positions: [7], Rows: [1, 4]),
                // Touches nothing: no rows.
                new Intervention("blocks.0.hook_resid_pre", InterventionOp.ZeroAblate, Positions: [2], Rows: []),
            ],
            Logits = LogitsMode.Last,
        };
        var forwards = await SameAnswerAsync(gpt2, spec);
        AssertReused(forwards, length, [7, 7]);
        Assert.Equal([(1, length), (2, 2 * (length - 7))], forwards);
    }

    [Fact]
    public async Task Rows_patched_from_position_zero_run_as_a_plain_forward_beside_the_reused_ones()
    {
        const int length = 10;
        var prompt = Prompt(gpt2, length, 6);
        var spec = new RunSpec
        {
            Inputs = Enumerable.Range(0, 5).Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions =
            [
                // Every position of row 0 (p = 0), position 0 of row 1 (p = 0), position 8 of rows 2 and 3;
                // the last one reaches every row but starts at 9, so row 4 starts at 9.
                new Intervention("hook_embed", InterventionOp.Scale, Scale: 1.5, Rows: [0]),
                new Intervention("blocks.0.hook_resid_pre", InterventionOp.Set, Random(7, gpt2.Config.DModel), Positions: [0], Rows: [1]),
                new Intervention("blocks.1.hook_mlp_out", InterventionOp.Add, Random(8, 1, 1, gpt2.Config.DModel), Positions: [8], Rows: [2, 3]),
                new Intervention("blocks.1.hook_resid_pre", InterventionOp.Scale, Scale: 2, Positions: [9]),
            ],
            Logits = LogitsMode.Last,
        };
        var forwards = await SameAnswerAsync(gpt2, spec);
        AssertReused(forwards, length, [0, 0, 8, 8, 9]);
        Assert.Contains((2, 2 * length), forwards);
    }

    [Fact]
    public async Task A_capture_takes_the_plain_forward_with_the_same_answer()
    {
        var (sweep, _) = ResidSweep(gpt2, 8, [4, 6]);
        var spec = new RunSpec
        {
            Inputs = sweep.Inputs, Interventions = sweep.Interventions, Logits = LogitsMode.Last,
            Captures = [new CaptureSpec { Hooks = ["blocks.1.hook_resid_post"], Positions = PositionSelection.Last }],
        };
        AssertPlain(await SameAnswerAsync(gpt2, spec), spec);
    }

    [Fact]
    public async Task Rows_with_different_ids_take_the_plain_forward_with_the_same_answer()
    {
        var (sweep, _) = ResidSweep(gpt2, 8, [4, 6]);
        var other = Prompt(gpt2, 8, 99);
        var spec = new RunSpec
        {
            Inputs = [.. sweep.Inputs.Take(sweep.Inputs.Count - 1), InputSpec.FromIds(other)],
            Interventions = sweep.Interventions, Logits = LogitsMode.Last,
        };
        AssertPlain(await SameAnswerAsync(gpt2, spec), spec);
    }

    [Fact]
    public async Task A_value_with_a_position_dimension_takes_the_plain_forward_with_the_same_answer()
    {
        const int length = 8;
        var prompt = Prompt(gpt2, length, 8);
        var spec = new RunSpec
        {
            Inputs = Enumerable.Range(0, 3).Select(_ => InputSpec.FromIds(prompt)).ToList(),
            Interventions =
            [
                new Intervention("blocks.1.hook_resid_pre", InterventionOp.Set, Random(9, length, gpt2.Config.DModel), Positions: [5, 6], Rows: [0]),
                new Intervention("blocks.0.hook_resid_pre", InterventionOp.Set, Random(10, gpt2.Config.DModel), Positions: [6], Rows: [1]),
            ],
            Logits = LogitsMode.Last,
        };
        AssertPlain(await SameAnswerAsync(gpt2, spec), spec);
    }

    [Fact]
    public async Task Loss_full_logits_or_a_single_row_take_the_plain_forward_with_the_same_answer()
    {
        var (sweep, _) = ResidSweep(gpt2, 8, [4, 6]);
        var loss = new RunSpec { Inputs = sweep.Inputs, Interventions = sweep.Interventions, Logits = LogitsMode.Last, Loss = true };
        AssertPlain(await SameAnswerAsync(gpt2, loss), loss);
        var all = new RunSpec { Inputs = sweep.Inputs, Interventions = sweep.Interventions, Logits = LogitsMode.All };
        AssertPlain(await SameAnswerAsync(gpt2, all), all);
        // One row: the prefix plus its suffix would cost more than the plain forward.
        var single = new RunSpec { Inputs = [sweep.Inputs[0]], Interventions = [sweep.Interventions[0]], Logits = LogitsMode.Last };
        AssertPlain(await SameAnswerAsync(gpt2, single), single);
    }

    [Fact]
    public void The_setting_binds_from_configuration()
    {
        ModelServiceOptions Bind(string? value) => new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ModelService:PrefixReuse"] = value })
            .Build().GetSection(ModelServiceOptions.Section).Get<ModelServiceOptions>() ?? new ModelServiceOptions();
        Assert.False(Bind("false").ToEngineOptions().PrefixReuse);
        Assert.True(Bind("true").ToEngineOptions().PrefixReuse);
        Assert.True(new ModelServiceOptions().ToEngineOptions().PrefixReuse);
    }
}
