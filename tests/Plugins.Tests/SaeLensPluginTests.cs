using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.SAE;
using InterpMesh.Plugins.Testing;
using static InterpMesh.Plugins.Tests.SaeLensFolders;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// The SAE plugin's evaluate and inspect modes on every architecture it reads, on the "concepts"
/// toy (GPT-2 layout: d_model 64, 4 heads of 16, d_mlp 256): SAEs built to reconstruct exactly
/// splice back with no loss, a transcoder is spliced at hook_name_out, and training writes folders
/// SAELens 6 and 5 read with the hook and model names.
/// </summary>
public sealed class SaeLensPluginTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly string[] Texts = ["the dog is happy . what a lovely walk .", "the cakes are bad . what a grim meal .", "the teams are kind . what a great match ."];

    private static TestModel Concepts() => TestModel.Load(RepoPaths.Models("concepts"), name: "concepts");

    private static async Task<JsonNode> RunAsync(TestModel model, InMemoryArtifactStore store, object parameters)
    {
        using var context = new TestAnalysisContext(model.Client, store);
        var result = await PluginHarness.RunAsync(new SaePlugin(), JsonSerializer.Serialize(parameters), context);
        return result.Summary!;
    }

    /// <summary>The mean CE loss of <see cref="Texts"/> (one batch, right padding) with an intervention.</summary>
    private static async Task<double> LossAsync(TestModel model, Intervention intervention)
    {
        var tokens = await model.Client.TokenizeAsync(Texts);
        var request = new RunRequest { Padding = Padding.Right, Loss = true, Interventions = { intervention } };
        request.Inputs.AddRange(tokens.Select(t => new Input { Tokens = new TokenIds { Ids = { t } } }));
        await foreach (var o in model.Client.RunAsync(request))
        {
            if (o.Result is { Loss: { } l })
                return l;
        }
        throw new InvalidOperationException("no loss");
    }

    private static async Task<int> PaddedLengthAsync(TestModel model) => (await model.Client.TokenizeAsync(Texts)).Max(t => t.Length);

    /// <summary>
    /// W_enc = [I, −I], W_dec = [I; −I]: ReLU(x − b) − ReLU(b − x) + b = x exactly, for standard,
    /// JumpReLU (threshold 0), gated (b_gate = b_mag = r_mag = 0) and TopK (k = d: the d non-negative
    /// entries of [x, −x]).
    /// </summary>
    private static Dictionary<string, Tensor> Identity(string arch, int d, long seed)
    {
        var id = eye(d);
        var w = new Dictionary<string, Tensor>
        {
            ["W_enc"] = cat([id, id.neg()], 1),
            ["W_dec"] = cat([id, id.neg()], 0),
            ["b_dec"] = randn([d], generator: new Generator((ulong)seed)).mul(S(0.3)),
        };
        if (arch == "gated")
        {
            w["b_gate"] = zeros(2 * d);
            w["r_mag"] = zeros(2 * d);
            w["b_mag"] = zeros(2 * d);
        }
        else
        {
            w["b_enc"] = zeros(2 * d);
        }
        if (arch == "jumprelu")
            w["threshold"] = zeros(2 * d);
        return w;
    }

    public static TheoryData<string, string, string, int?> ExactSaes => new()
    {
        { "jumprelu", "blocks.0.hook_resid_post", "none", null },
        { "gated", "blocks.1.hook_resid_pre", "none", null },
        { "topk", "blocks.0.hook_mlp_out", "none", null },
        { "standard", "blocks.0.attn.hook_z", "hook_z", null },
        { "jumprelu", "blocks.0.attn.hook_z", "hook_z", 2 },
    };

    [Theory]
    [MemberData(nameof(ExactSaes))]
    public async Task An_exact_SAE_of_every_architecture_splices_back_with_no_loss_and_inspects(string arch, string hook, string reshape, int? head)
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        int d = head is not null ? 16 : 64;
        using (NewDisposeScope())
        {
            var cfg = Cfg6(arch, d, 2 * d, hook, reshape: reshape, k: arch == "topk" ? d : null, headIndex: head);
            await store.SaveFilesAsync("saes/exact", Folder(cfg, Identity(arch, d, 3)));
        }
        var e = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/exact", texts = Texts });
        Assert.Equal(arch, e["architecture"]!.GetValue<string>());
        Assert.True(e["explained_variance"]!.GetValue<double>() > 1 - 1e-5, $"EV {e["explained_variance"]}");
        Assert.Equal(e["ce_clean"]!.GetValue<double>(), e["ce_with_sae"]!.GetValue<double>(), 4);
        Assert.True(e["ce_zero_ablation"]!.GetValue<double>() > e["ce_clean"]!.GetValue<double>() + 1e-3, "zero-ablation must cost loss, or the check is empty");
        Assert.Equal(1.0, e["ce_loss_recovered"]!.GetValue<double>(), 2);
        Assert.Equal(head, e["hook_head_index"]?.GetValue<int>());

        var inspect = await RunAsync(model, store, new { mode = "inspect", sae = "saes/exact", texts = Texts, feature = 1, top = 2 });
        Assert.InRange(inspect["density"]!.GetValue<double>(), 0.0, 1.0);
        // A decoder row in the residual space reads through the unembedding; per-head ones do not.
        Assert.Equal(reshape == "none", inspect["promotes"] is JsonArray);
        var perToken = await RunAsync(model, store, new { mode = "inspect", sae = "saes/exact", texts = Texts });
        Assert.Equal(arch, perToken["architecture"]!.GetValue<string>());
    }

    [Fact]
    public async Task An_SAE_at_one_head_that_outputs_zero_costs_what_ablating_that_head_costs()
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        using (NewDisposeScope())
        {
            var w = Identity("standard", 16, 1);
            w["W_dec"] = zeros(32, 16);
            w["b_dec"] = zeros(16);
            await store.SaveFilesAsync("saes/zero-head", Folder(Cfg6("standard", 16, 32, "blocks.0.attn.hook_z", reshape: "hook_z", headIndex: 1), w));
        }
        var e = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/zero-head", texts = Texts });
        // The splice keeps the BOS position (it is not evaluated): the same as zero-ablating head 1 after it.
        var zero = new Intervention { Hook = "blocks.0.attn.hook_z", Op = InterventionOp.ZeroAblate, Heads = { 1 }, Positions = { Enumerable.Range(1, await PaddedLengthAsync(model) - 1) } };
        Assert.Equal(await LossAsync(model, zero), e["ce_with_sae"]!.GetValue<double>(), 5);
        Assert.True(e["ce_with_sae"]!.GetValue<double>() > e["ce_clean"]!.GetValue<double>() + 1e-4, "zeroing the head must cost loss, or the check is empty");
    }

    /// <summary>
    /// A transcoder from blocks.0.mlp.hook_pre to blocks.0.hook_mlp_out: W_enc = I, W_dec and b_dec
    /// the MLP's own output weights, so it is the MLP with ReLU for gelu_new. The plugin's explained
    /// variance and spliced CE loss equal the test's own: the activations captured here, the output
    /// computed here, set at hook_mlp_out.
    /// </summary>
    [Theory]
    [InlineData("transcoder")]
    [InlineData("jumprelu_transcoder")]
    [InlineData("skip_transcoder")]
    public async Task A_transcoder_is_evaluated_where_it_decodes_and_matches_a_direct_computation(string arch)
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        Dictionary<string, Tensor> w;
        using (var weights = new FileStream(Path.Combine(RepoPaths.Models("concepts"), "model.safetensors"), FileMode.Open, FileAccess.Read))
        {
            var all = SafeTensors.Read(weights, "model");
            w = new Dictionary<string, Tensor>
            {
                ["W_enc"] = eye(256), ["b_enc"] = zeros(256),
                ["W_dec"] = all["transformer.h.0.mlp.c_proj.weight"].clone(), ["b_dec"] = all["transformer.h.0.mlp.c_proj.bias"].clone(),
            };
            foreach (var t in all.Values)
                t.Dispose();
        }
        if (arch == "jumprelu_transcoder")
            w["threshold"] = full(256, S(0.05));
        if (arch == "skip_transcoder")
            w["W_skip"] = randn([64, 256], generator: new Generator(2)).mul(S(0.01));
        var cfg = Cfg6(arch, 256, 256, "blocks.0.mlp.hook_pre", applyBDec: false, dOut: 64, hookOut: "blocks.0.hook_mlp_out");
        await store.SaveFilesAsync("saes/transcoder", Folder(cfg, w));
        var e = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/transcoder", texts = Texts });
        Assert.Equal("blocks.0.hook_mlp_out", e["hook_out"]!.GetValue<string>());

        // The same numbers computed here.
        var info = await model.Client.GetInfoAsync();
        var tokens = (await model.Client.TokenizeAsync(Texts)).ToArray();
        var request = new RunRequest { Padding = Padding.Right, Captures = { new Capture { Hooks = { "blocks.0.mlp.hook_pre", "blocks.0.hook_mlp_out" } } } };
        request.Inputs.AddRange(tokens.Select(t => new Input { Tokens = new TokenIds { Ids = { t } } }));
        var acts = new Dictionary<string, Tensor>();
        await foreach (var o in model.Client.RunAsync(request))
        {
            if (o.Activation is { } a)
                acts[o.Hook!] = a.to_type(ScalarType.Float32);
        }
        Intervention set;
        double ev;
        using (NewDisposeScope())
        {
            var pre = acts["blocks.0.mlp.hook_pre"];
            var target = acts["blocks.0.hook_mlp_out"];
            var f = pre.relu();
            if (w.TryGetValue("threshold", out var th))
                f = f * pre.gt(th).to_type(ScalarType.Float32);
            var output = f.matmul(w["W_dec"]) + w["b_dec"];
            if (w.TryGetValue("W_skip", out var skip))
                output = output + pre.matmul(skip.t());
            int start = info.TokenizerAddsBos ? 1 : 0;
            var mask = zeros([pre.shape[0], pre.shape[1]], dtype: ScalarType.Bool);
            for (int i = 0; i < tokens.Length; i++)
                mask[i, start..tokens[i].Length] = true;
            var real = target[mask];
            ev = 1 - (output[mask] - real).square().sum().item<float>() / (real - real.mean([0])).square().sum().item<float>();
            var spliced = output.where(mask.unsqueeze(-1), target).contiguous();
            set = new Intervention { Hook = "blocks.0.hook_mlp_out", Op = InterventionOp.Set, Value = spliced.ToWireTensor().ToProto() };
        }
        foreach (var t in acts.Values)
            t.Dispose();
        var lossRequest = new RunRequest { Padding = Padding.Right, Loss = true, Interventions = { set } };
        lossRequest.Inputs.AddRange(tokens.Select(t => new Input { Tokens = new TokenIds { Ids = { t } } }));
        double loss = double.NaN;
        await foreach (var o in model.Client.RunAsync(lossRequest))
        {
            if (o.Result is { Loss: { } l })
                loss = l;
        }
        Assert.Equal(ev, e["explained_variance"]!.GetValue<double>(), 4);
        Assert.Equal(loss, e["ce_with_sae"]!.GetValue<double>(), 4);
        // ReLU for gelu_new keeps most of what the MLP does (on this toy, marginally more than all of it).
        Assert.InRange(e["ce_loss_recovered"]!.GetValue<double>(), 0.5, 1.1);
        // Inspect encodes at the input hook; a latent's decoder row (d_out = d_model) reads through the unembedding.
        var inspect = await RunAsync(model, store, new { mode = "inspect", sae = "saes/transcoder", texts = Texts, feature = 3, top = 2 });
        Assert.Equal("blocks.0.hook_mlp_out", inspect["hook_out"]!.GetValue<string>());
        Assert.InRange(inspect["density"]!.GetValue<double>(), 0.0, 1.0);
        Assert.Equal(2, inspect["promotes"]!.AsArray().Count);
        foreach (var t in w.Values)
            t.Dispose();
    }

    [Fact]
    public async Task A_transcoder_that_outputs_zero_costs_what_zero_ablating_its_output_hook_costs()
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        using (NewDisposeScope())
        {
            var w = new Dictionary<string, Tensor> { ["W_enc"] = randn(64, 32), ["b_enc"] = zeros(32), ["W_dec"] = zeros(32, 64), ["b_dec"] = zeros(64) };
            await store.SaveFilesAsync("saes/zero-transcoder", Folder(Cfg6("transcoder", 64, 32, "blocks.1.ln2.hook_normalized", applyBDec: false, dOut: 64, hookOut: "blocks.1.hook_mlp_out"), w));
        }
        var e = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/zero-transcoder", texts = Texts });
        // The splice keeps the BOS position (it is not evaluated): the same as zero-ablating hook_mlp_out after it.
        var zero = new Intervention { Hook = "blocks.1.hook_mlp_out", Op = InterventionOp.ZeroAblate, Positions = { Enumerable.Range(1, await PaddedLengthAsync(model) - 1) } };
        Assert.Equal(await LossAsync(model, zero), e["ce_with_sae"]!.GetValue<double>(), 5);
        Assert.True(e["ce_zero_ablation"]!.GetValue<double>() > e["ce_clean"]!.GetValue<double>() + 1e-3);
    }

    [Fact]
    public async Task A_Gemma_Scope_folder_is_evaluated_at_the_hook_the_caller_names()
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        using (NewDisposeScope())
        {
            var w = Identity("jumprelu", 64, 5);
            // Gemma Scope does not subtract b_dec from the input: with b_dec = 0 the identity is exact.
            w["b_dec"] = zeros(64);
            var (npz, _, _) = GemmaScopeNpz(w, zeros(1, 64));
            await store.SaveFilesAsync("gemma-scope/layer_1", new Dictionary<string, byte[]> { ["params.npz"] = npz });
        }
        var e = await RunAsync(model, store, new { mode = "evaluate", sae = "gemma-scope/layer_1", hook = "blocks.1.hook_resid_post", texts = Texts });
        Assert.Equal("gemma-scope", e["layout"]!.GetValue<string>());
        Assert.True(e["explained_variance"]!.GetValue<double>() > 1 - 1e-5);
        var noHook = await Assert.ThrowsAsync<InvalidParametersException>(() => RunAsync(model, store, new { mode = "evaluate", sae = "gemma-scope/layer_1", texts = Texts }));
        Assert.Contains("names no hook: give hook", noHook.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, string> RefusedForThisModel => new()
    {
        { Cfg6("standard", 16, 32, "blocks.0.attn.hook_z", reshape: "hook_z", headIndex: 7).ToJsonString(), "hook_head_index 7 is out of range; this model has 4 heads" },
        { Cfg6("standard", 48, 32, "blocks.0.attn.hook_z", reshape: "hook_z").ToJsonString(), "flattened (reshape_activations hook_z) is 4 × 16 = 64 wide" },
        { Cfg6("standard", 16, 32, "blocks.0.hook_resid_post", headIndex: 1).ToJsonString(), "hook 'blocks.0.hook_resid_post' has shape [batch, pos, d_model]; reshape_activations hook_z and hook_head_index need a [batch, pos, head, d_head] hook" },
        { Cfg6("standard", 8, 32, "blocks.0.attn.hook_q", headIndex: 1).ToJsonString(), "the SAE has d_in = 8 but one head of 'blocks.0.attn.hook_q' is d_head = 16 wide" },
        { Cfg6("standard", 16, 32, "blocks.0.attn.hook_q", headIndex: 3).ToJsonString(), "" },
        { Cfg6("standard", 64, 32, "blocks.0.hook_resid_post", reshape: "none").ToJsonString(), "" },
        { Cfg6("transcoder", 64, 32, "blocks.0.ln2.hook_normalized", applyBDec: false, dOut: 48, hookOut: "blocks.0.hook_mlp_out").ToJsonString(), "the transcoder has d_out = 48 but 'blocks.0.hook_mlp_out' of this model is 64 wide" },
        { Cfg6("transcoder", 64, 32, "blocks.0.ln2.hook_normalized", applyBDec: false, dOut: 64, hookOut: "blocks.0.attn.hook_pattern").ToJsonString(), "hook_name_out 'blocks.0.attn.hook_pattern' has shape" },
    };

    [Theory]
    [MemberData(nameof(RefusedForThisModel))]
    public async Task Folders_that_do_not_fit_the_model_are_refused_before_any_work(string cfgJson, string message)
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        var cfg = JsonNode.Parse(cfgJson)!.AsObject();
        string arch = cfg["architecture"]!.GetValue<string>();
        int dIn = cfg["d_in"]!.GetValue<int>(), dSae = cfg["d_sae"]!.GetValue<int>();
        using (NewDisposeScope())
            await store.SaveFilesAsync("saes/misfit", Folder(cfg, Weights(arch, dIn, dSae, 1, cfg["d_out"]?.GetValue<int>())));
        if (message.Length == 0)
        {
            // The control: the same kind of folder, fitting, is accepted.
            var ok = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/misfit", texts = Texts });
            Assert.True(ok["tokens"]!.GetValue<double>() > 0);
            return;
        }
        var e = await Assert.ThrowsAsync<InvalidParametersException>(() => RunAsync(model, store, new { mode = "evaluate", sae = "saes/misfit", texts = Texts }));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// An unfolded expected_average_only_in folder (as SAELens' checkpoints are, without their
    /// activation_scaler.json) needs its scale; given as norm_scaling_factor, it is applied.
    /// </summary>
    [Fact]
    public async Task An_unfolded_normalised_folder_without_its_scale_needs_norm_scaling_factor()
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        using (NewDisposeScope())
            await store.SaveFilesAsync("saes/unfolded", Folder(Cfg6("standard", 64, 128, "blocks.0.hook_resid_post", normalize: "expected_average_only_in"), Identity("standard", 64, 2)));
        var e = await Assert.ThrowsAsync<InvalidParametersException>(() => RunAsync(model, store, new { mode = "evaluate", sae = "saes/unfolded", texts = Texts }));
        Assert.Contains("give norm_scaling_factor", e.Message, StringComparison.Ordinal);
        var ok = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/unfolded", texts = Texts, norm_scaling_factor = 0.5 });
        Assert.Equal(0.5, ok["folded_scale"]!.GetValue<double>());
        // The identity is exact at any scale: SAE(x·s)/s = x.
        Assert.True(ok["explained_variance"]!.GetValue<double>() > 1 - 1e-5);
        // Exported, a decoder row is in the model's (unscaled) space: W_dec[5] / s = e₅ / 0.5.
        await RunAsync(model, store, new { mode = "export_direction", sae = "saes/unfolded", feature = 5, norm_scaling_factor = 0.5, save_as = "vectors/five" });
        var vector = await store.LoadTensorsAsync("vectors/five");
        var expected = new float[64];
        expected[5] = 2;
        Assert.Equal(expected, vector["mean_diff.0"].data<float>().ToArray());
        foreach (var t in vector.Values)
            t.Dispose();
    }

    /// <summary>
    /// Training with expected_average_only_in writes a folded folder (normalize_activations none) with
    /// metadata.sae_lens_version, hook and model names and sparsity.safetensors; its checkpoint keeps
    /// the scale in activation_scaler.json and resumes; the 5.x option writes the flat config.
    /// </summary>
    [Fact]
    public async Task Training_writes_folders_SAELens_6_and_5_read_with_names_folded_scale_and_sparsity()
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        string[] texts = [.. Enumerable.Range(0, 12).Select(i => Texts[i % 3])];
        var train = await RunAsync(model, store, new
        {
            hook = "blocks.0.hook_resid_post", texts, architecture = "topk", d_sae = 64, k = 4, steps = 30, batch_tokens = 32,
            normalize = "expected_average_only_in", checkpoint_every = 20, save_as = "saes/normalised",
        });
        Assert.Equal(30, train["steps"]!.GetValue<int>());
        var folder = await store.LoadFilesAsync("saes/normalised");
        var cfg = JsonNode.Parse(folder["cfg.json"])!;
        Assert.Equal("none", cfg["normalize_activations"]!.GetValue<string>());
        var (arch, _, meta) = LoadLikeSaeLens6(Encoding.UTF8.GetString(folder["cfg.json"]));
        Assert.Equal(("topk", "blocks.0.hook_resid_post", "concepts"), (arch, meta["hook_name"]!.GetValue<string>(), meta["model_name"]!.GetValue<string>()));
        Assert.Equal(48, meta["context_size"]!.GetValue<int>());
        var sparsity = SafeTensors.Read(folder["sparsity.safetensors"], "sparsity")["sparsity"].data<float>().ToArray();
        Assert.Equal(64, sparsity.Length);
        Assert.All(sparsity, v => Assert.InRange(v, -10.001f, 0f));
        // TopK-4 of 64: each token fires at most 4 latents (fewer when a kept pre-activation is negative).
        Assert.InRange(sparsity.Sum(v => Math.Pow(10, v) - 1e-10), 2.0, 4.0 + 1e-4);

        var checkpoint = await store.LoadFilesAsync("saes/normalised-checkpoint");
        Assert.Equal("expected_average_only_in", JsonNode.Parse(checkpoint["cfg.json"])!["normalize_activations"]!.GetValue<string>());
        double scale = JsonNode.Parse(checkpoint["activation_scaler.json"])!["scaling_factor"]!.GetValue<double>();
        Assert.Equal(train["norm_scaling_factor"]!.GetValue<double>(), scale);
        // √d_in over the mean norm of the first 10 shuffled batches: near √d_in over the mean norm of every training token.
        var tokens = await model.Client.TokenizeAsync(texts);
        var capture = new RunRequest { Padding = Padding.Right, Captures = { new Capture { Hooks = { "blocks.0.hook_resid_post" } } } };
        capture.Inputs.AddRange(tokens.Select(t => new Input { Tokens = new TokenIds { Ids = { t } } }));
        double meanNorm = 0;
        await foreach (var o in model.Client.RunAsync(capture))
        {
            if (o.Activation is { } a)
            {
                using var scope = NewDisposeScope();
                var norms = a.norm(2).data<float>().ToArray();
                int width = (int)a.shape[1];
                var real = tokens.SelectMany((t, i) => Enumerable.Range(1, t.Length - 1).Select(p => norms[i * width + p])).ToList();
                meanNorm = real.Average();
            }
        }
        Assert.InRange(scale, 0.8 * 8 / meanNorm, 1.25 * 8 / meanNorm);
        var resumed = await RunAsync(model, store, new
        {
            hook = "blocks.0.hook_resid_post", texts, architecture = "topk", d_sae = 64, k = 4, steps = 30, batch_tokens = 32,
            normalize = "expected_average_only_in", resume_from = "saes/normalised-checkpoint", save_as = "saes/resumed",
        });
        Assert.Equal(20, resumed["resumed_from_step"]!.GetValue<int>());

        // The final folder has its scale folded; going on with the scale would apply it twice.
        var mismatch = await Assert.ThrowsAsync<InvalidParametersException>(() => RunAsync(model, store, new
        {
            hook = "blocks.0.hook_resid_post", texts, architecture = "topk", d_sae = 64, k = 4, steps = 30, batch_tokens = 32,
            normalize = "expected_average_only_in", resume_from = "saes/normalised", save_as = "saes/wrong",
        }));
        Assert.Contains("saved with normalize_activations 'none'; resume it with the same architecture and normalize", mismatch.Message, StringComparison.Ordinal);

        await RunAsync(model, store, new { hook = "blocks.0.hook_resid_post", texts, architecture = "standard", d_sae = 64, steps = 10, batch_tokens = 32, saelens_version = "5", save_as = "saes/v5" });
        var v5 = await store.LoadFilesAsync("saes/v5");
        var fields5 = LoadLikeSaeLens5(Encoding.UTF8.GetString(v5["cfg.json"]));
        Assert.Equal(("blocks.0.hook_resid_post", "concepts", 0), (fields5["hook_name"]!.GetValue<string>(), fields5["model_name"]!.GetValue<string>(), fields5["hook_layer"]!.GetValue<int>()));
        var e = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/v5", texts = Texts });
        Assert.Equal("saelens-pre-6", e["layout"]!.GetValue<string>());
    }

    /// <summary>
    /// The case of issue #22 on the concepts toy: an SAE trained with expected_average_only_in, saved
    /// folded, evaluates as trained; the same weights with the scale dropped (how SAELens ran the old
    /// layout, whose scale sat in a private key) reconstruct worse.
    /// </summary>
    [Fact]
    public async Task A_normalised_SAE_saved_folded_evaluates_better_than_with_its_scale_dropped()
    {
        using var model = Concepts();
        var store = new InMemoryArtifactStore();
        string[] nouns = ["dog", "cat", "bird", "horse", "apple", "cake", "pie", "soup"], moods = ["happy", "sad", "good", "bad", "warm", "cold"];
        var rng = new Random(1);
        var texts = Enumerable.Range(0, 200).Select(_ => $"the {nouns[rng.Next(8)]} is {moods[rng.Next(6)]} . what a {moods[rng.Next(6)]} {nouns[rng.Next(8)]} .").ToArray();
        var train = await RunAsync(model, store, new
        {
            hook = "blocks.0.hook_resid_post", texts, architecture = "topk", d_sae = 128, k = 8, steps = 300, batch_tokens = 128,
            normalize = "expected_average_only_in", save_as = "saes/normalised",
        });
        double scale = train["norm_scaling_factor"]!.GetValue<double>();
        var heldOut = texts.Take(48).ToArray();
        var folded = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/normalised", texts = heldOut });
        using (NewDisposeScope())
        {
            var (sae, info) = InterpMesh.Plugins.SAE.Formats.SaeLensFormat.Read(await store.LoadFilesAsync("saes/normalised"), "saes/normalised");
            using (sae)
            {
                sae.FoldInputScale(1 / scale);
                await store.SaveFilesAsync("saes/scale-dropped", InterpMesh.Plugins.SAE.Formats.SaeLensFormat.Write(sae, info));
            }
        }
        var dropped = await RunAsync(model, store, new { mode = "evaluate", sae = "saes/scale-dropped", texts = heldOut });
        double evFolded = folded["explained_variance"]!.GetValue<double>(), evDropped = dropped["explained_variance"]!.GetValue<double>();
        output.WriteLine($"scale {scale:0.####}: training EV {train["explained_variance"]}, evaluate EV folded {evFolded:0.####} (CE recovered {folded["ce_loss_recovered"]}), scale dropped {evDropped:0.####} (CE recovered {dropped["ce_loss_recovered"]})");
        // Measured: EV 0.9990 vs 0.9962 (unexplained variance ×3.8), CE recovered 0.992 vs 0.957.
        Assert.True(1 - evDropped > 2 * (1 - evFolded), $"EV folded {evFolded} vs scale dropped {evDropped}");
        Assert.True(folded["ce_loss_recovered"]!.GetValue<double>() > dropped["ce_loss_recovered"]!.GetValue<double>() + 0.01);
    }
}
