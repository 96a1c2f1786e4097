using System.Text.RegularExpressions;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Hooks;

/// <summary>Hook capture and the intervention sanity checks interpretability work relies on.</summary>
public sealed class HookTests(ShippedModels models) : TorchTest, IClassFixture<ShippedModels>
{
    private static readonly int[] PromptA = [1, 403, 407, 261, 378, 300, 20];
    private static readonly int[] PromptB = [1, 45, 46, 47, 48, 49, 50];

    public static TheoryData<string> ModelNames => new() { "stories-hf", "gpt2-tiny", "llama-tiny" };

    private Transformer Model(string name) => name switch
    {
        "stories-hf" => models.StoriesHf.Transformer,
        "gpt2-tiny" => models.Gpt2Tiny.Transformer,
        _ => LlamaTiny.Value,
    };

    private static readonly Lazy<Transformer> LlamaTiny = new(() =>
    {
        TorchRuntime.Initialize();
        return Presets.CreateRandom(Presets.Config("llama-tiny"), seed: 5);
    });

    private static Dictionary<string, Tensor> Run(Transformer m, int[] ids, IEnumerable<string> capture, IEnumerable<Intervention>? interventions = null, PositionSelection? positions = null, Tensor? mask = null, Tensor? tokens = null)
    {
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(capture.ToList(), positions)], interventions);
        var result = new Dictionary<string, Tensor>();
        var logits = m.Forward(tokens ?? Ids(ids), mask, plan, (h, t) => result[h.Name] = t, LogitsMode.All);
        result["(logits)"] = logits!;
        return result;
    }

    /// <summary>Evaluates a shape template such as [batch, pos, head, d_head] for a model and input.</summary>
    private static long[] Expected(string template, ModelConfig c, long batch, long pos) =>
        Regex.Matches(template, @"[a-z_0-9]+").Select(m => m.Value switch
        {
            "1" => 1L,
            "batch" => batch,
            "pos" or "query_pos" or "key_pos" => pos,
            "head" => c.NHeads,
            "kv_head" => c.NKvHeads,
            "d_head" => c.DHead,
            "d_model" => c.DModel,
            "d_mlp" => c.DMlp,
            "d_vocab" => c.VocabSize,
            var other => throw new InvalidOperationException($"unknown dimension {other}"),
        }).ToArray();

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Every_listed_hook_can_be_captured_with_its_documented_shape(string name)
    {
        var m = Model(name);
        var (ids, mask) = TokenBatch.Pad([PromptA, PromptB[..4]], PaddingSide.Left);
        var captured = Run(m, [], m.Hooks.All.Select(h => h.Name), mask: mask, tokens: ids);
        foreach (var hook in m.Hooks.All)
        {
            Assert.True(captured.ContainsKey(hook.Name), $"{hook.Name} was not captured");
            Assert.Equal(Expected(hook.Shape, m.Config, 2, PromptA.Length), captured[hook.Name].shape);
        }
        Assert.Equal(m.Hooks.All.Count, captured.Count - 1);
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Captured_values_are_consistent_with_the_residual_stream(string name)
    {
        var m = Model(name);
        var c = Run(m, PromptA, ["blocks.0.*", "blocks.1.hook_resid_pre"]);
        // resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out; next resid_pre = resid_post
        Assert.True(MaxAbsDiff(c["blocks.0.hook_resid_mid"], c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"]) < 1e-5);
        Assert.True(MaxAbsDiff(c["blocks.0.hook_resid_post"], c["blocks.0.hook_resid_mid"] + c["blocks.0.hook_mlp_out"]) < 1e-5);
        Assert.True(MaxAbsDiff(c["blocks.1.hook_resid_pre"], c["blocks.0.hook_resid_post"]) < 1e-6);
        // attn_out = Σ_heads result (+ bias); pattern rows are distributions; z = pattern · v per head
        var bias = m.Weights.Blocks[0].OutBias;
        var summed = c["blocks.0.attn.hook_result"].sum(2) + (bias is null ? zeros(1) : bias);
        Assert.True(MaxAbsDiff(c["blocks.0.hook_attn_out"], summed) < 1e-5);
        Assert.True(MaxAbsDiff(c["blocks.0.attn.hook_pattern"].sum(-1), ones(1)) < 1e-5);
        var pattern = c["blocks.0.attn.hook_pattern"];
        Assert.True(pattern.triu(1).abs().max().item<float>() == 0, "attention looks at future positions");
    }

    [Fact]
    public void Globs_select_hooks_and_unknown_names_fail_clearly()
    {
        var m = models.Gpt2Tiny.Transformer;
        var hooks = m.Hooks.Resolve(["blocks.*.hook_resid_post"]);
        Assert.Equal(["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], hooks.Select(h => h.Name));
        var e = Assert.Throws<InvalidRequestException>(() => m.Hooks.Resolve(["blocks.0.hook_resid_pots"]));
        Assert.Contains("unknown hook 'blocks.0.hook_resid_pots'", e.Message);
        e = Assert.Throws<InvalidRequestException>(() => m.Hooks.Resolve(["blocks.9.*"]));
        Assert.Contains("matches no hook", e.Message);
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Adding_zero_changes_nothing(string name)
    {
        var m = Model(name);
        var clean = Run(m, PromptA, ["blocks.*.hook_resid_post"]);
        // Nothing beyond float32 rounding (an add returns a contiguous copy of a strided view, and
        // kernels may then sum in another order) at every hook that does not change how attention
        // output is computed ...
        var ivs = m.Hooks.All.Where(h => h.Layout != HookLayout.AttentionMap && !h.Name.EndsWith("attn.hook_result", StringComparison.Ordinal) && !ChangesThePath(h.Name))
            .Select(h => new Intervention(h.Name, InterventionOp.Add, zeros(1))).ToList();
        var patched = Run(m, PromptA, ["blocks.*.hook_resid_post"], ivs);
        foreach (var (key, value) in clean)
            Assert.True(MaxAbsDiff(value, patched[key]) == 0, $"{key} changed by {MaxAbsDiff(value, patched[key]):E2}");
        // ... and only float rounding where the hook forces per-head results (heads summed in another order),
        // an explicit attention pattern (softmax instead of the fused kernel), per-head q/k/v inputs
        // (per-head projections) or a decomposed norm (LayerNorm step by step instead of fused).
        var perHead = m.Hooks.All.Where(h => h.Layout == HookLayout.AttentionMap || h.Name.EndsWith("attn.hook_result", StringComparison.Ordinal) || ChangesThePath(h.Name))
            .Select(h => new Intervention(h.Name, InterventionOp.Add, zeros(1))).ToList();
        var rounded = Run(m, PromptA, ["blocks.*.hook_resid_post"], perHead);
        foreach (var (key, value) in clean)
            Assert.True(MaxAbsDiff(value, rounded[key]) < 1e-4, $"{key} changed by {MaxAbsDiff(value, rounded[key]):E2}");
    }

    /// <summary>Optional hooks whose materialisation computes the same values another way.</summary>
    private static bool ChangesThePath(string hook) =>
        hook.EndsWith("hook_attn_in", StringComparison.Ordinal) || hook.EndsWith("_input", StringComparison.Ordinal)
        || hook.EndsWith(".hook_scale", StringComparison.Ordinal) || hook.EndsWith(".hook_normalized", StringComparison.Ordinal);

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Zero_ablating_a_head_changes_only_that_head_and_what_follows(string name)
    {
        var m = Model(name);
        int layer = m.Config.NLayers - 1, head = 1;
        string z = $"blocks.{layer}.attn.hook_z";
        string[] capture = [$"blocks.{layer}.attn.hook_q", z, $"blocks.{layer}.attn.hook_result", $"blocks.{layer}.hook_resid_pre", $"blocks.{layer}.hook_resid_mid", $"blocks.{layer}.hook_resid_post"];
        var clean = Run(m, PromptA, capture);
        var ablated = Run(m, PromptA, capture, [new Intervention(z, InterventionOp.ZeroAblate, Heads: [head])]);

        Assert.Equal(0.0, MaxAbsDiff(ablated[$"blocks.{layer}.hook_resid_pre"], clean[$"blocks.{layer}.hook_resid_pre"]));
        Assert.Equal(0.0, MaxAbsDiff(ablated[$"blocks.{layer}.attn.hook_q"], clean[$"blocks.{layer}.attn.hook_q"]));
        Assert.Equal(0.0, ablated[z][.., .., head].abs().max().item<float>());
        for (int h = 0; h < m.Config.NHeads; h++)
        {
            if (h != head)
                Assert.Equal(0.0, MaxAbsDiff(ablated[z][.., .., h], clean[z][.., .., h]));
        }
        Assert.Equal(0.0, ablated[$"blocks.{layer}.attn.hook_result"][.., .., head].abs().max().item<float>());
        Assert.True(MaxAbsDiff(ablated[$"blocks.{layer}.hook_resid_post"], clean[$"blocks.{layer}.hook_resid_post"]) > 1e-6, "ablating a head changed nothing downstream");
        // The residual stream loses exactly that head's contribution.
        var expectedMid = clean[$"blocks.{layer}.hook_resid_mid"] - clean[$"blocks.{layer}.attn.hook_result"][.., .., head];
        Assert.True(MaxAbsDiff(ablated[$"blocks.{layer}.hook_resid_mid"], expectedMid) < 1e-5);
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Patching_another_prompts_activations_reproduces_its_downstream_activations(string name)
    {
        var m = Model(name);
        string patchAt = "blocks.0.hook_resid_post";
        var later = new[] { $"blocks.{m.Config.NLayers - 1}.hook_resid_post", "ln_final.hook_normalized", patchAt };
        var source = Run(m, PromptB, later);
        var patched = Run(m, PromptA, later, [new Intervention(patchAt, InterventionOp.Set, source[patchAt])]);
        var clean = Run(m, PromptA, later);
        foreach (var hook in later)
            Assert.True(MaxAbsDiff(patched[hook], source[hook]) <= 1e-5, $"{hook} after patching differs from the source run");
        Assert.True(MaxAbsDiff(patched["(logits)"], source["(logits)"]) <= 1e-4);
        Assert.True(MaxAbsDiff(clean["(logits)"], source["(logits)"]) > 1e-3, "the two prompts should differ to begin with");
    }

    [Fact]
    public void Position_restricted_interventions_touch_only_those_positions()
    {
        var m = models.StoriesHf.Transformer;
        string hook = "blocks.2.hook_resid_pre";
        var clean = Run(m, PromptA, [hook]);
        var steer = full(m.Config.DModel, 3.0f);
        var steered = Run(m, PromptA, [hook], [new Intervention(hook, InterventionOp.Add, steer, Positions: [2, 4])]);
        var delta = steered[hook] - clean[hook];
        for (int p = 0; p < PromptA.Length; p++)
        {
            double expected = p is 2 or 4 ? 3.0 : 0.0;
            Assert.True(Math.Abs(delta[0, p].mean().item<float>() - expected) < 1e-5, $"position {p}");
        }
    }

    [Fact]
    public void Scale_and_mean_ablate_do_what_they_say()
    {
        var m = models.Gpt2Tiny.Transformer;
        string hook = "blocks.1.mlp.hook_post";
        var clean = Run(m, PromptA, [hook]);
        var scaled = Run(m, PromptA, [hook], [new Intervention(hook, InterventionOp.Scale, Scale: 0.5)]);
        Assert.True(MaxAbsDiff(scaled[hook], clean[hook] * 0.5) < 1e-6);
        var mean = clean[hook].mean([0, 1]);
        var ablated = Run(m, PromptA, [hook], [new Intervention(hook, InterventionOp.MeanAblate, mean)]);
        Assert.True(MaxAbsDiff(ablated[hook], mean.expand(ablated[hook].shape)) < 1e-6);
    }

    [Fact]
    public void Capture_positions_and_dtypes_are_honoured()
    {
        var m = models.StoriesHf.Transformer;
        string hook = "blocks.1.hook_resid_post";
        var all = Run(m, PromptA, [hook]);
        var some = Run(m, PromptA, [hook], positions: PositionSelection.At(0, 3, -1));
        Assert.Equal([1, 3, 64], some[hook].shape);
        Assert.Equal(0.0, MaxAbsDiff(some[hook][0, 1], all[hook][0, 3]));
        Assert.Equal(0.0, MaxAbsDiff(some[hook][0, 2], all[hook][0, PromptA.Length - 1]));
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest([hook], PositionSelection.Last, ScalarType.BFloat16)], null);
        Tensor? bf = null;
        m.Forward(Ids(PromptA), null, plan, (_, t) => bf = t, LogitsMode.None);
        Assert.Equal(ScalarType.BFloat16, bf!.dtype);
        Assert.True(MaxAbsDiff(bf[0, 0], all[hook][0, ^1]) < 0.05);
    }

    [Fact]
    public void Without_logits_the_forward_stops_after_the_deepest_captured_hook()
    {
        var m = models.StoriesHf.Transformer;
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.1.hook_resid_post"])], null);
        var seen = new List<string>();
        // An intervention deeper than the capture would throw if that block ran (the value has the wrong shape).
        var trap = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.1.hook_resid_post"])], [new Intervention("blocks.3.hook_resid_pre", InterventionOp.Add, zeros(7, 7, 7))]);
        Assert.Null(m.Forward(Ids(PromptA), null, trap, (h, t) => seen.Add(h.Name), LogitsMode.None));
        Assert.Equal(["blocks.1.hook_resid_post"], seen);
        Assert.Throws<InvalidRequestException>(() => m.Forward(Ids(PromptA), null, trap, (h, t) => { }, LogitsMode.Last));
    }

    [Fact]
    public void Concurrent_requests_never_see_each_others_interventions()
    {
        var m = models.StoriesHf.Transformer;
        string hook = "blocks.0.hook_resid_post";
        var expectedClean = Run(m, PromptA, ["blocks.4.hook_resid_post"])["(logits)"].clone().DetachFromDisposeScope();
        var failures = 0;
        Parallel.For(0, 16, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            using var mode = inference_mode();
            using var scope = NewDisposeScope();
            var ivs = i % 2 == 0 ? null : new[] { new Intervention(hook, InterventionOp.Add, full(64, 5.0f)) };
            var plan = HookPlan.Build(m.Hooks, null, ivs);
            var logits = m.Forward(Ids(PromptA), null, plan, null, LogitsMode.All)!;
            bool same = MaxAbsDiff(logits, expectedClean) < 1e-5;
            if (same != (i % 2 == 0))
                Interlocked.Increment(ref failures);
        });
        Assert.Equal(0, failures);
    }

    [Fact]
    public void Bad_interventions_fail_with_clear_messages()
    {
        var m = models.StoriesHf.Transformer;
        var e = Assert.Throws<InvalidRequestException>(() => HookPlan.Build(m.Hooks, null, [new Intervention("blocks.0.hook_resid_post", InterventionOp.ZeroAblate, Heads: [0])]));
        Assert.Contains("no head dimension", e.Message);
        e = Assert.Throws<InvalidRequestException>(() => HookPlan.Build(m.Hooks, null, [new Intervention("blocks.0.hook_resid_post", InterventionOp.Add)]));
        Assert.Contains("needs a value", e.Message);
        var plan = HookPlan.Build(m.Hooks, null, [new Intervention("blocks.0.hook_resid_post", InterventionOp.Add, zeros(65))]);
        e = Assert.Throws<InvalidRequestException>(() => m.Forward(Ids(PromptA), null, plan, null, LogitsMode.Last));
        Assert.Contains("does not broadcast", e.Message);
        plan = HookPlan.Build(m.Hooks, null, [new Intervention("blocks.0.attn.hook_z", InterventionOp.ZeroAblate, Heads: [8])]);
        e = Assert.Throws<InvalidRequestException>(() => m.Forward(Ids(PromptA), null, plan, null, LogitsMode.Last));
        Assert.Contains("head 8 is out of range", e.Message);
    }

    [Fact]
    public void Bad_token_input_fails_with_clear_messages()
    {
        var m = models.StoriesHf.Transformer;
        var e = Assert.Throws<InvalidRequestException>(() => m.Forward(Ids(1, 512), null, HookPlan.Empty, null, LogitsMode.Last));
        Assert.Contains("outside the vocabulary", e.Message);
        e = Assert.Throws<InvalidRequestException>(() => m.Forward(Ids(Enumerable.Repeat(5, 513).ToArray()), null, HookPlan.Empty, null, LogitsMode.Last));
        Assert.Contains("context length", e.Message);
    }
}
