using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Forward;

/// <summary>
/// The weight catalogue against the forward: every family's captured activations are recomputed
/// with plain einsums over the served TransformerLens-layout weights (a second computation path:
/// these products, not the runtime's fused q/k/v and gate/up matrices).
/// </summary>
public sealed class WeightCatalogueTests(FamilyModels models) : TorchTest, IClassFixture<FamilyModels>
{
    private const double Tolerance = 1e-4;

    public static TheoryData<string> Families => new(FamilyModels.Names);

    [Theory]
    [MemberData(nameof(Families))]
    public void Every_weight_opens_with_its_declared_shape(string family)
    {
        var m = models[family];
        foreach (var e in m.Parameters.All)
        {
            using var t = e.Open();
            Assert.True(t.shape.SequenceEqual(e.Shape), $"{family} {e.Name}: declared [{string.Join(", ", e.Shape)}], opened [{string.Join(", ", t.shape)}]");
        }
        var c = m.Config;
        Assert.Equal(c.Positional == PositionalKind.Learned, m.Parameters.All.Any(e => e.Name == "pos_embed.W_pos"));
        Assert.Equal(c.GatedMlp, m.Parameters.All.Any(e => e.Name == "blocks.0.mlp.W_gate"));
        Assert.Equal([c.NKvHeads, c.DModel, c.DHead], Shape(m, "blocks.0.attn.W_K"));
        Assert.Equal([c.NHeads, c.DModel, c.DHead], Shape(m, "blocks.0.attn.W_Q"));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Served_weights_reproduce_the_captured_activations(string family)
    {
        var m = models[family];
        var c = m.Config;
        const int t = 7;
        var rng = new Random(3);
        var ids = Enumerable.Range(0, t).Select(_ => rng.Next(c.VocabSize)).ToArray();
        // Named, not "blocks.0.*": capturing hook_attn_in would switch on the split-input path.
        string[] wanted = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
            "blocks.0.attn.hook_v", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_in", "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre",
            "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "ln_final.hook_normalized", "logits"];
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest([.. wanted.Where(n => m.Hooks.All.Any(h => h.Name == n))])], null);
        var a = new Dictionary<string, Tensor>();
        m.Forward(Ids(ids), null, plan, (h, v) => a[h.Name] = v.to(ScalarType.Float64)[0], LogitsMode.All);

        var p = m.Parameters.All.ToDictionary(e => e.Name, e => e.Open().to(ScalarType.Float64));
        Tensor? Opt(string name) => p.TryGetValue(name, out var v) ? v : null;
        Tensor Affine(Tensor x, Tensor? w, Tensor? b)
        {
            var y = w is null ? x : x * w;
            return b is null ? y : y + b;
        }
        Tensor Rms(Tensor x) => x / (x.pow(2).mean([-1], keepdim: true) + c.NormEps).sqrt();
        void Same(string what, Tensor expected, Tensor actual)
        {
            double diff = MaxAbsDiff(expected, actual);
            Assert.True(diff <= Tolerance, $"{family} {what}: max |Δ| = {diff:E2}");
        }

        // Embeddings (Gemma multiplies by √d_model, rounded to the weight dtype, as the config says).
        var idx = tensor(ids.Select(i => (long)i).ToArray());
        var embed = p["embed.W_E"].index_select(0, idx);
        if (c.ScaleEmbeddings)
            embed = embed * (double)(float)Math.Sqrt(c.DModel);
        Same("hook_embed = W_E[ids]", embed, a["hook_embed"]);
        if (c.Positional == PositionalKind.Learned)
            Same("hook_pos_embed = W_pos[:pos]", p["pos_embed.W_pos"].narrow(0, 0, t), a["hook_pos_embed"]);

        // Attention: q/k/v before any q/k norm and rotary; z · W_O summed over heads.
        var attnIn = c.PreNorms ? Affine(a["blocks.0.ln1.hook_normalized"], p["blocks.0.ln1.w"], Opt("blocks.0.ln1.b")) : a["blocks.0.hook_resid_pre"];
        foreach (var x in new[] { "q", "k", "v" })
        {
            var X = x.ToUpperInvariant();
            var expected = einsum("pm,hmd->phd", attnIn, p["blocks.0.attn.W_" + X]);
            Same($"attn.hook_{x} = ln1 · W_{X} + b_{X}", Affine(expected, null, Opt("blocks.0.attn.b_" + X)), a["blocks.0.attn.hook_" + x]);
        }
        var attnOut = Affine(einsum("phd,hdm->pm", a["blocks.0.attn.hook_z"], p["blocks.0.attn.W_O"]), null, Opt("blocks.0.attn.b_O"));
        if (c.PostNorms)
            attnOut = Rms(attnOut) * p["blocks.0.ln1_post.w"];
        Same("hook_attn_out = Σ_h z · W_O + b_O", attnOut, a["blocks.0.hook_attn_out"]);

        // MLP.
        Tensor mlpIn = !c.PreNorms ? a["blocks.0.hook_mlp_in"]
            : c.Residual == ResidualKind.ParallelSharedNorm ? Affine(a["blocks.0.ln2.hook_normalized"], p["blocks.0.ln1.w"], Opt("blocks.0.ln1.b"))
            : Affine(a["blocks.0.ln2.hook_normalized"], p["blocks.0.ln2.w"], Opt("blocks.0.ln2.b"));
        if (c.GatedMlp)
        {
            Same("mlp.hook_pre = ln2 · W_gate", Affine(mlpIn.matmul(p["blocks.0.mlp.W_gate"]), null, Opt("blocks.0.mlp.b_gate")), a["blocks.0.mlp.hook_pre"]);
            Same("mlp.hook_pre_linear = ln2 · W_in", Affine(mlpIn.matmul(p["blocks.0.mlp.W_in"]), null, Opt("blocks.0.mlp.b_in")), a["blocks.0.mlp.hook_pre_linear"]);
        }
        else
        {
            Same("mlp.hook_pre = ln2 · W_in + b_in", Affine(mlpIn.matmul(p["blocks.0.mlp.W_in"]), null, Opt("blocks.0.mlp.b_in")), a["blocks.0.mlp.hook_pre"]);
        }
        var mlpOut = Affine(a["blocks.0.mlp.hook_post"].matmul(p["blocks.0.mlp.W_out"]), null, Opt("blocks.0.mlp.b_out"));
        if (c.PostNorms)
            mlpOut = Rms(mlpOut) * p["blocks.0.ln2_post.w"];
        Same("hook_mlp_out = post · W_out + b_out", mlpOut, a["blocks.0.hook_mlp_out"]);

        // Unembedding.
        var logits = Affine(Affine(a["ln_final.hook_normalized"], p["ln_final.w"], Opt("ln_final.b")).matmul(p["unembed.W_U"]), null, Opt("unembed.b_U"));
        if (c.FinalSoftcap is double cap)
            logits = (logits / cap).tanh() * cap;
        Same("logits = ln_final · W_U + b_U", logits, a["logits"]);
    }

    [Fact]
    public void Tied_embeddings_serve_W_U_as_W_E_transposed()
    {
        var tied = FamilyModels.Names.Select(n => models[n]).First(m => m.Weights.Tied);
        var p = tied.Parameters.All.ToDictionary(e => e.Name);
        using var we = p["embed.W_E"].Open();
        using var wu = p["unembed.W_U"].Open();
        Assert.Equal(0.0, MaxAbsDiff(we.t(), wu));
    }

    [Fact]
    public void Bad_names_say_what_to_fix()
    {
        var catalogue = models["llama"].Parameters;
        var empty = Assert.Throws<InvalidRequestException>(() => catalogue.Resolve([]));
        Assert.Contains("blocks.0.attn.W_Q", empty.Message);
        var unknown = Assert.Throws<InvalidRequestException>(() => catalogue.Resolve(["blocks.0.attn.W_X"]));
        Assert.Contains("'embed.W_E'", unknown.Message);
        var glob = Assert.Throws<InvalidRequestException>(() => catalogue.Resolve(["blocks.*.nothing"]));
        Assert.Contains("matches no weight", glob.Message);
        var longName = Assert.Throws<InvalidRequestException>(() => catalogue.Resolve([new string('x', 5000)]));
        Assert.Contains("longer than", longName.Message);
        Assert.True(longName.Message.Length < 400);
        var resolved = catalogue.Resolve(["blocks.*.attn.W_O", "blocks.0.attn.W_O", "embed.W_E"]);
        Assert.Equal("embed.W_E", resolved[0].Name);
        Assert.Equal(models["llama"].Config.NLayers + 1, resolved.Count);
    }

    private static long[] Shape(Transformer m, string name) => m.Parameters.All.Single(e => e.Name == name).Shape;
}
