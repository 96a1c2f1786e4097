using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tests.Forward;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace InterpMesh.Runtime.Tests.Hooks;

/// <summary>
/// TransformerLens hook semantics (HookedTransformer.from_pretrained_no_processing) on every family,
/// checked against a second computation from the captured tensors and the weights.
/// </summary>
public sealed class HookSemanticsTests(FamilyModels models) : TorchTest, IClassFixture<FamilyModels>
{
    /// <summary>x · W + b with W in the runtime's [in, out] layout (a second path: no runtime code).</summary>
    private static Tensor Project(Tensor x, Tensor w, Tensor? bias) => bias is null ? x.matmul(w) : x.matmul(w) + bias;

    private const double Tolerance = 1e-4;

    public static TheoryData<string> Families => new(FamilyModels.Names);

    private static int[] Tokens(int vocab, int n = 13) => Enumerable.Range(0, n).Select(i => (i * 29 + 3) % vocab).ToArray();

    private static Dictionary<string, Tensor> Capture(Transformer m, Tensor ids, Tensor? mask, IEnumerable<string> hooks, IEnumerable<Intervention>? ivs = null)
    {
        var result = new Dictionary<string, Tensor>();
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest([.. hooks])], ivs);
        var logits = m.Forward(ids, mask, plan, (h, v) => result[h.Name] = v, LogitsMode.All)!;
        result["logits!"] = logits;
        return result;
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Normalized_times_gain_plus_bias_is_what_the_next_stage_reads(string family)
    {
        var m = models[family];
        var c = m.Config;
        var w = m.Weights.Blocks[0];
        var cap = Capture(m, Ids(Tokens(c.VocabSize)), null, ["blocks.0.*", "ln_final.*", "logits"]);
        Tensor Affine(Tensor normalized, Tensor gain, Tensor? bias) => bias is null ? normalized * gain : normalized * gain + bias;

        if (c.PreNorms)
        {
            // scale and normalized decompose the residual: (x − μ) = normalized · scale (μ = 0 for RMSNorm).
            var x = cap["blocks.0.hook_resid_pre"];
            var centred = c.Norm == NormKind.LayerNorm ? x - x.mean([-1], keepdim: true) : x;
            Assert.True(MaxAbsDiff(cap["blocks.0.ln1.hook_normalized"] * cap["blocks.0.ln1.hook_scale"], centred) < 1e-5, $"{family}: ln1 normalized · scale ≠ centred input");
            // normalized · w + b, projected, gives hook_q (before any q norm and RoPE).
            var ln1 = Affine(cap["blocks.0.ln1.hook_normalized"], w.Ln1Weight!, w.Ln1Bias);
            var q = Project(ln1, w.Qkv.narrow(1, 0, (long)c.NHeads * c.DHead), w.QkvBias?.narrow(0, 0, (long)c.NHeads * c.DHead));
            Assert.True(MaxAbsDiff(q, cap["blocks.0.attn.hook_q"].flatten(2)) < Tolerance, $"{family}: ln1 normalized · w + b does not give hook_q");
            // ln2 reads hook_mlp_in; its output feeds the MLP.
            var ln2 = Affine(cap["blocks.0.ln2.hook_normalized"], w.Ln2Weight ?? w.Ln1Weight!, w.Ln2Weight is null ? w.Ln1Bias : w.Ln2Bias);
            var pre = Project(ln2, w.MlpIn, w.MlpInBias).narrow(-1, 0, c.DMlp);
            Assert.True(MaxAbsDiff(pre, cap["blocks.0.mlp.hook_pre"]) < Tolerance, $"{family}: ln2 normalized · w + b does not give mlp.hook_pre");
        }
        if (c.PostNorms)
        {
            Assert.True(MaxAbsDiff(cap["blocks.0.ln1_post.hook_normalized"] * w.Ln1PostWeight!, cap["blocks.0.hook_attn_out"]) < Tolerance, $"{family}: ln1_post · w ≠ hook_attn_out");
            Assert.True(MaxAbsDiff(cap["blocks.0.ln2_post.hook_normalized"] * w.Ln2PostWeight!, cap["blocks.0.hook_mlp_out"]) < Tolerance, $"{family}: ln2_post · w ≠ hook_mlp_out");
        }
        // mlp_in is the residual the MLP's norm reads: resid_mid, or resid_pre in parallel blocks (which have no resid_mid).
        bool parallel = c.Residual != ResidualKind.Sequential;
        Assert.Equal(!parallel, cap.ContainsKey("blocks.0.hook_resid_mid"));
        var expectedMlpIn = parallel ? cap["blocks.0.hook_resid_pre"] : cap["blocks.0.hook_resid_mid"];
        Assert.True(MaxAbsDiff(cap["blocks.0.hook_mlp_in"], expectedMlpIn) == 0, $"{family}: hook_mlp_in is not the MLP norm's input");
        var post = parallel ? cap["blocks.0.hook_resid_pre"] + cap["blocks.0.hook_attn_out"] + cap["blocks.0.hook_mlp_out"] : cap["blocks.0.hook_resid_mid"] + cap["blocks.0.hook_mlp_out"];
        Assert.True(MaxAbsDiff(post, cap["blocks.0.hook_resid_post"]) < 1e-5, $"{family}: resid_post is not the sum of its parts");

        // The final norm: normalized · w + b through the unembedding (+ bias, soft-cap) gives the logits.
        var final = Affine(cap["ln_final.hook_normalized"], m.Weights.LnFinalWeight, m.Weights.LnFinalBias);
        var logits = Project(final, m.Weights.Unembed, m.Weights.UnembedBias);
        if (c.FinalSoftcap is double softcap)
            logits = (logits / softcap).tanh() * softcap;
        Assert.True(MaxAbsDiff(logits, cap["logits!"]) < Tolerance, $"{family}: ln_final normalized · w + b does not give the logits");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Changing_one_kv_heads_k_input_changes_only_that_heads_keys(string family)
    {
        var m = models[family];
        var c = m.Config;
        var w = m.Weights.Blocks[0];
        var ids = Ids(Tokens(c.VocabSize));
        using var g = new Generator(4);
        var delta = randn([c.DModel], generator: g);
        var cap = Capture(m, ids, null, ["blocks.0.hook_resid_pre", "blocks.0.hook_k_input", "blocks.0.attn.hook_k"],
            [new Intervention("blocks.0.hook_k_input", InterventionOp.Add, delta, Heads: [0])]);
        var clean = Capture(m, ids, null, ["blocks.0.attn.hook_k"]);
        Assert.Equal([1, Tokens(c.VocabSize).Length, c.NKvHeads, c.DModel], cap["blocks.0.hook_k_input"].shape);

        // Second path: kv head 0's keys from (resid_pre + δ) through ln1 and that head's W_K rows.
        var input = cap["blocks.0.hook_resid_pre"] + delta;
        Tensor normed = input;
        if (c.PreNorms)
        {
            normed = c.Norm == NormKind.LayerNorm
                ? F.layer_norm(input, [c.DModel], w.Ln1Weight!, w.Ln1Bias, c.NormEps)
                : input * (input.pow(2).mean([-1], keepdim: true) + c.NormEps).rsqrt() * w.Ln1Weight!;
        }
        long kRow = (long)c.NHeads * c.DHead;
        var k0 = Project(normed, w.Qkv.narrow(1, kRow, c.DHead), w.QkvBias?.narrow(0, kRow, c.DHead));
        Assert.True(MaxAbsDiff(cap["blocks.0.attn.hook_k"].select(2, 0), k0) < Tolerance, $"{family}: kv head 0 keys do not follow its changed input");
        if (c.NKvHeads > 1)
            Assert.True(MaxAbsDiff(cap["blocks.0.attn.hook_k"].narrow(2, 1, c.NKvHeads - 1), clean["blocks.0.attn.hook_k"].narrow(2, 1, c.NKvHeads - 1)) < 1e-5, $"{family}: other kv heads changed");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma2")]
    [InlineData("mistral")]
    public void Padding_query_rows_get_an_all_zero_pattern(string family)
    {
        var m = models[family];
        int[][] prompts = [Tokens(m.Config.VocabSize, 30), Tokens(m.Config.VocabSize, 6)];
        foreach (var side in new[] { PaddingSide.Left, PaddingSide.Right })
        {
            var (ids, mask) = TokenBatch.Pad(prompts, side);
            var cap = Capture(m, ids, mask, ["blocks.*.attn.hook_pattern"]);
            for (int l = 0; l < m.Config.NLayers; l++)
            {
                var pattern = cap[$"blocks.{l}.attn.hook_pattern"];
                var rowSums = pattern.sum(-1); // [batch, head, query]
                var expected = mask.to(ScalarType.Float32).unsqueeze(1).expand_as(rowSums);
                Assert.True(MaxAbsDiff(rowSums, expected) < 1e-5, $"{family} {side} layer {l}: pattern rows of padding queries are not zero (or real rows do not sum to 1)");
            }
        }
    }

    [Theory]
    [InlineData("gpt_neo", 1, 16)]
    [InlineData("gemma2", 0, 16)]
    [InlineData("gemma3_text", 0, 12)]
    [InlineData("mistral", 0, 20)]
    [InlineData("phi3", 0, 24)]
    public void Sliding_layers_see_exactly_the_window_including_the_query(string family, int layer, int window)
    {
        var m = models[family];
        var cap = Capture(m, Ids(Tokens(m.Config.VocabSize, 40)), null, [$"blocks.{layer}.attn.hook_pattern"]);
        var seen = cap[$"blocks.{layer}.attn.hook_pattern"][0, 0].gt(0);
        var q = arange(40).unsqueeze(1);
        var k = arange(40).unsqueeze(0);
        var expected = k.le(q).logical_and(k.gt(q - window));
        Assert.True(seen.eq(expected).all().item<bool>(), $"{family} layer {layer}: attended keys differ from (q − {window}, q]");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Attention_scores_are_scaled_q_dot_k_soft_capped_then_masked(string family)
    {
        var m = models[family];
        var c = m.Config;
        int n = 10; // shorter than every fixture's window: only the causal mask applies (windows are tested above)
        var cap = Capture(m, Ids(Tokens(c.VocabSize, n)), null, ["blocks.*.attn.hook_*"]);
        for (int l = 0; l < c.NLayers; l++)
        {
            // The scale each family's transformers attention uses, written out here.
            double scale = family switch
            {
                "gpt2" => 1.0 / Math.Sqrt(c.DHead) / (l + 1), // scale_attn_by_inverse_layer_idx
                "gpt_neo" => 1.0,
                "gemma2" or "gemma3_text" => 1.0 / Math.Sqrt(24), // query_pre_attn_scalar
                _ => 1.0 / Math.Sqrt(c.DHead),
            };
            double? softcap = family == "gemma2" ? 4.0 : null;
            bool rotary = cap.ContainsKey($"blocks.{l}.attn.hook_rot_q");
            var q = cap[$"blocks.{l}.attn.{(rotary ? "hook_rot_q" : "hook_q")}"][0].transpose(0, 1);
            var k = cap[$"blocks.{l}.attn.{(rotary ? "hook_rot_k" : "hook_k")}"][0].transpose(0, 1).repeat_interleave(c.NHeads / c.NKvHeads, 0);
            var scores = q.matmul(k.transpose(1, 2)) * scale;
            if (softcap is double sc)
                scores = (scores / sc).tanh() * sc;
            var captured = cap[$"blocks.{l}.attn.hook_attn_scores"][0];
            var allowed = captured.isfinite();
            Assert.True(allowed.eq(ones(n, n, ScalarType.Bool).tril()).all().item<bool>(), $"{family} layer {l}: the mask is not causal");
            Assert.True(MaxAbsDiff(captured.masked_fill(allowed.logical_not(), 0), scores.masked_fill(allowed.logical_not(), 0)) < Tolerance, $"{family} layer {l}: scores differ from scaled q·k");
        }
    }

    /// <summary>
    /// A capture of all positions shares storage with the forward's activation (copied to the host
    /// only when its stage ends); a capture of explicit positions is a copy made at the hook. Both
    /// must hold the same values at every hook of every family: a later in-place write to a hooked
    /// activation would show here.
    /// </summary>
    [Theory]
    [MemberData(nameof(Families))]
    public void A_capture_holds_the_value_at_its_hook_though_it_shares_the_activations_storage(string family)
    {
        var m = models[family];
        int n = 9;
        var ids = Ids(Tokens(m.Config.VocabSize, n));
        var names = m.Hooks.All.Select(h => h.Name).ToArray();
        Dictionary<string, Tensor> Run(PositionSelection positions)
        {
            var result = new Dictionary<string, Tensor>();
            m.Forward(ids, null, HookPlan.Build(m.Hooks, [new CaptureRequest(names, positions)], null), (h, v) => result[h.Name] = v, LogitsMode.Last);
            return result;
        }
        var shared = Run(PositionSelection.All);
        var copied = Run(PositionSelection.At([.. Enumerable.Range(0, n)]));
        Assert.Equal(names.Length, shared.Count);
        foreach (var name in names)
            Assert.True(shared[name].shape.SequenceEqual(copied[name].shape) && shared[name].eq(copied[name]).all().item<bool>(), $"{family}: {name} captured whole differs from the copy taken at the hook");
    }
}
