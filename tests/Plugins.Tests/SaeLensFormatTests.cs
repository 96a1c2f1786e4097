using System.Text;
using System.Text.Json.Nodes;
using InterpMesh.Plugins.SAE.Formats;
using InterpMesh.Plugins.SAE.Model;
using static InterpMesh.Plugins.Tests.SaeLensFolders;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// SAELens folders both ways: folders built as SAELens writes them for every architecture are read
/// and encode as SAELens computes; folders InterpMesh writes are read back by parsers that follow
/// SAELens' own loading code. References: jbloomAus/SAELens v6.18.0 (commit 91ca16cc) unless named.
/// </summary>
public sealed class SaeLensFormatTests
{
    private const float Tolerance = 1e-5f;

    private static void Close(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double diff = (expected - actual).abs().max().item<float>();
        double scale = Math.Max(1, expected.abs().max().item<float>());
        Assert.True(diff <= Tolerance * scale, $"{what}: max |difference| {diff} (scale {scale})");
    }

    /// <summary>
    /// One folder per architecture, as SAELens 6.18 writes it (save_model / save_inference_model,
    /// sae.py:494-511, 965-982): cfg.json from <see cref="Cfg6"/>, the state dict of the class.
    /// batchtopk and matryoshka_batchtopk: BatchTopKTrainingSAE saves as jumprelu with
    /// threshold = the running topk threshold for every latent (batchtopk_sae.py:74-81, 128-134).
    /// </summary>
    [Theory]
    [InlineData("standard", "none", false)]
    [InlineData("standard", "constant_norm_rescale", false)]
    [InlineData("standard", "layer_norm", false)]
    [InlineData("topk", "none", false)]
    [InlineData("topk", "none", true)]
    [InlineData("jumprelu", "none", false)]
    [InlineData("jumprelu", "layer_norm", false)]
    [InlineData("batchtopk-as-jumprelu", "none", false)]
    [InlineData("gated", "none", false)]
    [InlineData("gated", "constant_norm_rescale", false)]
    [InlineData("transcoder", "none", false)]
    [InlineData("skip_transcoder", "none", false)]
    [InlineData("jumprelu_transcoder", "none", false)]
    public void Every_SAELens_6_architecture_encodes_and_decodes_as_SAELens_computes(string kind, string normalize, bool rescale)
    {
        using var scope = NewDisposeScope();
        string arch = kind == "batchtopk-as-jumprelu" ? "jumprelu" : kind;
        bool transcoder = arch.EndsWith("transcoder", StringComparison.Ordinal);
        int dIn = 12, dSae = 20, k = 5;
        int? dOut = transcoder ? 9 : null;
        var w = Weights(arch, dIn, dSae, seed: 11, dOut);
        if (kind == "batchtopk-as-jumprelu")
            w["threshold"] = full(dSae, S(0.21));
        var cfg = Cfg6(arch, dIn, dSae, transcoder ? "blocks.3.ln2.hook_normalized" : "blocks.3.hook_resid_post", applyBDec: !transcoder, normalize: normalize,
            k: arch == "topk" ? k : null, rescale: rescale, dOut: dOut, hookOut: transcoder ? "blocks.3.hook_mlp_out" : null);
        var (sae, info) = SaeLensFormat.Read(Folder(cfg, w), "folder");
        using (sae)
        {
            Assert.Equal(arch, sae.Architecture);
            Assert.Equal("saelens-6", info.Layout);
            Assert.Equal(transcoder ? "blocks.3.hook_mlp_out" : "blocks.3.hook_resid_post", info.OutputHook);
            Assert.Equal("gpt2", info.ModelName);
            var x = randn([3, 7, dIn], generator: new Generator(5)).mul(S(2));
            var (f, output) = sae.Forward(x);
            var (ef, eo) = Reference(arch, w, x, applyBDec: !transcoder, normalize, k, rescale);
            Close(ef, f, "features");
            Close(eo, output, "output");
            Close(ef, sae.Encode(x), "Encode");
            // Not vacuous: some latents are off and some on.
            double on = f.gt(S(0)).to_type(ScalarType.Float32).mean().item<float>();
            Assert.InRange(on, 0.01, 0.99);
        }
    }

    [Fact]
    public void Hook_z_and_head_index_are_read_from_6_x_and_pre_6_configs()
    {
        using var scope = NewDisposeScope();
        var w = Weights("standard", 16, 8, 3);
        var (sae, info) = SaeLensFormat.Read(Folder(Cfg6("standard", 16, 8, "blocks.1.attn.hook_z", reshape: "hook_z"), w), "z");
        sae.Dispose();
        Assert.True(info.ReshapeHookZ);
        Assert.Null(info.HookHeadIndex);
        // Pre-6.0 (no version): reshape defaults to hook_z for hook_z hooks, hook_point_head_index renamed (pretrained_sae_loaders.py:216-235).
        var pre6 = JsonNode.Parse("""{"hook_point": "blocks.1.attn.hook_z", "hook_point_head_index": 2, "d_in": 16, "d_sae": 8, "model_name": "gpt2-small"}""")!.AsObject();
        (sae, info) = SaeLensFormat.Read(Folder(pre6, w), "z-pre6");
        sae.Dispose();
        Assert.True(info.ReshapeHookZ);
        Assert.Equal(2, info.HookHeadIndex);
        Assert.Equal("saelens-pre-6", info.Layout);
    }

    /// <summary>
    /// Pre-6.0 configs as SAELens 2.x–5.x wrote them: boolean normalize_activations (v2.1.0
    /// training/config.py:60), <c>activation_fn: topk</c> with activation_fn_kwargs.k and no
    /// architecture (v2.x config.py:45), a non-trivial finetuning scaling_factor (v5.11.0 sae.py:
    /// apply_finetuning_scaling_factor, f·s before W_dec).
    /// </summary>
    [Fact]
    public void Pre_6_configs_with_boolean_normalisation_topk_activation_and_a_scaling_factor_are_honoured()
    {
        using var scope = NewDisposeScope();
        var w = Weights("standard", 10, 14, 4);
        var x = randn([6, 10], generator: new Generator(2));

        var topk = JsonNode.Parse("""{"hook_point": "blocks.0.hook_resid_pre", "d_in": 10, "d_sae": 14, "activation_fn": "topk", "activation_fn_kwargs": {"k": 3}, "normalize_activations": false}""")!.AsObject();
        var (sae, info) = SaeLensFormat.Read(Folder(topk, w), "v2-topk");
        using (sae)
        {
            Assert.Equal(("topk", 3, "none"), (sae.Architecture, sae.K, info.NormalizeActivations));
            Close(Reference("topk", w, x, k: 3).Features, sae.Encode(x), "topk features");
        }

        var boolean = JsonNode.Parse("""{"hook_point": "blocks.0.hook_resid_pre", "d_in": 10, "d_sae": 14, "normalize_activations": true}""")!.AsObject();
        (sae, info) = SaeLensFormat.Read(Folder(boolean, w), "v2-normalized", new SaeReadOptions(NormScalingFactor: 2.5));
        using (sae)
        {
            // true means expected_average_only_in; the scale given is folded: SAE(x·2.5)/2.5.
            Assert.Equal(("expected_average_only_in", 2.5), (info.NormalizeActivations, info.FoldedScale!.Value));
            var (ef, eo) = Reference("standard", w, x.mul(S(2.5)));
            var (f, o) = sae.Forward(x);
            Close(ef, f, "features");
            Close(eo.div(S(2.5)), o, "output");
        }

        var scaling = rand([14], generator: new Generator(9)).add(S(0.5));
        var withScaling = new Dictionary<string, Tensor>(w) { ["scaling_factor"] = scaling };
        var finetuned = JsonNode.Parse("""{"hook_point": "blocks.0.hook_resid_pre", "d_in": 10, "d_sae": 14, "finetuning_scaling_factor": true}""")!.AsObject();
        (sae, _) = SaeLensFormat.Read(Folder(finetuned, withScaling), "v5-finetuned");
        using (sae)
        {
            var (ef, _) = Reference("standard", w, x);
            Close(ef, sae.Encode(x), "features (scaling applies after encoding)");
            Close((ef * scaling).matmul(w["W_dec"]) + w["b_dec"], sae.Forward(x).Output, "output (f·s W_dec + b_dec)");
        }
        // All ones is dropped whatever finetuning_scaling_factor says (pretrained_sae_loaders.py:350-358).
        var allOnes = new Dictionary<string, Tensor>(w) { ["scaling_factor"] = ones(14) };
        (sae, _) = SaeLensFormat.Read(Folder(JsonNode.Parse("""{"hook_point": "h", "d_in": 10, "d_sae": 14}""")!.AsObject(), allOnes), "ones");
        using (sae)
            Close(Reference("standard", w, x).Output, sae.Forward(x).Output, "output with ones");
    }

    /// <summary>
    /// Gemma Scope as the official repositories ship it: params.npz only (np.savez, float32), JumpReLU,
    /// b_dec not subtracted (pretrained_sae_loaders.py:437-451, 463-496); numpy computes the expected encoding.
    /// </summary>
    [Fact]
    public void A_Gemma_Scope_params_npz_folder_encodes_as_numpy_computes()
    {
        using var scope = NewDisposeScope();
        var w = Weights("jumprelu", 12, 24, 21);
        var x = randn([9, 12], generator: new Generator(3));
        var (npz, features, output) = GemmaScopeNpz(w, x);
        var files = new Dictionary<string, byte[]> { ["layer_3/width_16k/average_l0_20/params.npz"] = npz };
        var (sae, info) = SaeLensFormat.Read(files, "gemma-scope-2b-pt-res", new SaeReadOptions("blocks.3.hook_resid_post"));
        using (sae)
        {
            Assert.Equal(("jumprelu", 12, 24, false, "gemma-scope"), (sae.Architecture, sae.DIn, sae.DSae, sae.ApplyBDecToInput, info.Layout));
            var (f, o) = sae.Forward(x);
            Close(tensor(features, [9, 24]), f, "features vs numpy");
            Close(tensor(output, [9, 12]), o, "output vs numpy");
            Assert.InRange(f.gt(S(0)).to_type(ScalarType.Float32).mean().item<float>(), 0.01, 0.99);
        }
        var wrongLayer = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(files, "gs", new SaeReadOptions("blocks.5.hook_resid_post")));
        Assert.Contains("the folder is layer_3, but hook 'blocks.5.hook_resid_post' is in block 5", wrongLayer.Message, StringComparison.Ordinal);
        var noHook = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(files, "gs"));
        Assert.Contains("which names no hook: give hook", noHook.Message, StringComparison.Ordinal);
    }

    /// <summary>The .npy reader against numpy's own files: float64 converted, fortran order and other dtypes refused by name.</summary>
    [Fact]
    public void Npy_arrays_numpy_writes_are_read_or_refused_by_dtype_and_order()
    {
        using var dir = new TempDir();
        Python("""
            import numpy as np, sys
            d = sys.argv[1]
            a = np.arange(6, dtype='<f8').reshape(2, 3) / 7
            np.savez_compressed(d + '/f8.npz', W_enc=a)
            np.savez(d + '/i4.npz', b_enc=np.arange(3, dtype='<i4'))
            np.save(d + '/fortran.npy', np.asfortranarray(np.ones((2, 3), dtype='<f4')))
            """, dir.Path);
        using var scope = NewDisposeScope();
        var read = Npz.Read(File.ReadAllBytes(Path.Combine(dir.Path, "f8.npz")), "f8.npz");
        var expected = tensor(Enumerable.Range(0, 6).Select(i => (float)(i / 7.0)).ToArray(), [2, 3]);
        Close(expected, read["W_enc"], "float64 array");
        var i4 = Assert.Throws<InvalidParametersException>(() => Npz.Read(File.ReadAllBytes(Path.Combine(dir.Path, "i4.npz")), "i4.npz"));
        Assert.Contains("i4.npz/b_enc: dtype '<i4' is not supported", i4.Message, StringComparison.Ordinal);
        var fortran = Assert.Throws<InvalidParametersException>(() => Npz.ReadNpy(File.ReadAllBytes(Path.Combine(dir.Path, "fortran.npy")), "fortran.npy"));
        Assert.Contains("fortran_order True is not supported", fortran.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// SAELens folds an expected_average_only_in scale into the weights when training ends
    /// (training/sae_trainer.py:187-192, sae.py:286-291) and saves normalize_activations none. The
    /// folded folder's explained variance equals the unfolded SAE's on scaled inputs; a checkpoint
    /// keeps the scale unfolded in activation_scaler.json (sae_trainer.py:230-250), which is applied when read.
    /// </summary>
    [Fact]
    public void A_folded_scale_gives_the_explained_variance_of_the_unfolded_SAE_with_its_scale()
    {
        using var scope = NewDisposeScope();
        using var sae = SparseAutoencoder.Create("topk", 16, 48, k: 6, seed: 8);
        using (no_grad())
        {
            sae.BEnc.copy_(randn([48], generator: new Generator(1)).mul(S(0.1)));
            sae.BDec.copy_(randn([16], generator: new Generator(2)));
        }
        double s = 0.37;
        var x = randn([200, 16], generator: new Generator(4)).mul(S(6)).add(S(1));
        // Unfolded, with the scale: x̂ = SAE(x·s)/s.
        var xHatUnfolded = sae.Decode(sae.Encode(x.mul(S(s)))).div(S(s));
        double Ev(Tensor xHat) => 1 - (xHat - x).square().sum().item<float>() / (x - x.mean([0])).square().sum().item<float>();
        double evUnfolded = Ev(xHatUnfolded);

        var info = new SaeInfo("blocks.0.hook_resid_post", "concepts", "topk", 16, 48, 6, "expected_average_only_in", s);
        var files = SaeLensFormat.Write(sae, info);
        var cfg = JsonNode.Parse(files["cfg.json"])!;
        Assert.Equal("none", cfg["normalize_activations"]!.GetValue<string>());
        Assert.False(files.ContainsKey("activation_scaler.json"));
        var (folded, foldedInfo) = SaeLensFormat.Read(files, "folded");
        using (folded)
        {
            Assert.Null(foldedInfo.NormScale);
            Close(sae.WEnc.mul(S(s)), folded.WEnc, "W_enc·s");
            var (f, xHat) = folded.Forward(x);
            Close(sae.Encode(x.mul(S(s))), f, "features");
            double evFolded = Ev(xHat);
            Assert.True(Math.Abs(evFolded - evUnfolded) < 1e-5, $"EV folded {evFolded} vs unfolded {evUnfolded}");
            // Ignoring the scale (what SAELens did with the old private key) gives another number.
            double evIgnored = Ev(sae.Decode(sae.Encode(x)));
            Assert.True(Math.Abs(evIgnored - evUnfolded) > 1e-3, $"EV without the scale {evIgnored} should differ from {evUnfolded}");
        }

        var checkpoint = SaeLensFormat.Write(sae, info, checkpoint: true);
        Assert.Equal("expected_average_only_in", JsonNode.Parse(checkpoint["cfg.json"])!["normalize_activations"]!.GetValue<string>());
        Assert.Equal(s, JsonNode.Parse(checkpoint["activation_scaler.json"])!["scaling_factor"]!.GetValue<double>());
        var (resumable, resumableInfo) = SaeLensFormat.Read(checkpoint, "checkpoint", new SaeReadOptions(FoldScale: false));
        using (resumable)
        {
            Assert.Equal(s, resumableInfo.NormScale);
            Close(sae.WEnc, resumable.WEnc, "unfolded W_enc");
        }
        var (applied, _) = SaeLensFormat.Read(checkpoint, "checkpoint");
        using (applied)
            Assert.True(Math.Abs(Ev(applied.Forward(x).Output) - evUnfolded) < 1e-5);
        // InterpMesh ≤ 1.1's layout: unfolded weights, the scale in interpmesh_norm_scale; applied when read.
        var legacy = new Dictionary<string, byte[]>(checkpoint);
        legacy.Remove("activation_scaler.json");
        var legacyCfg = JsonNode.Parse(legacy["cfg.json"])!.AsObject();
        legacyCfg["interpmesh_norm_scale"] = s;
        legacyCfg["metadata"]!.AsObject().Remove("sae_lens_version");
        legacy["cfg.json"] = Encoding.UTF8.GetBytes(legacyCfg.ToJsonString());
        var (old, oldInfo) = SaeLensFormat.Read(legacy, "legacy");
        using (old)
        {
            Assert.Equal(s, oldInfo.FoldedScale);
            Assert.True(Math.Abs(Ev(old.Forward(x).Output) - evUnfolded) < 1e-5);
        }
        // A SAELens folder declaring the normalisation without its scale is refused, not read with scale 1.
        var bare = new Dictionary<string, byte[]>(checkpoint);
        bare.Remove("activation_scaler.json");
        var e = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(bare, "bare"));
        Assert.Contains("normalize_activations 'expected_average_only_in' but the folder has no scale", e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// What InterpMesh writes, read as SAELens 6.x reads it (<see cref="LoadLikeSaeLens6"/>): the version
    /// is found, so metadata keeps hook_name and model_name; the 5.x option loads under 5.11's
    /// constructor and, as a pre-6.0 config, in 6.x with the names intact. The old layout (no
    /// sae_lens_version) loses them in the same parser, so the parser can tell.
    /// </summary>
    [Theory]
    [InlineData("topk")]
    [InlineData("standard")]
    public void Folders_InterpMesh_writes_load_in_SAELens_6_and_5_with_hook_and_model_names(string arch)
    {
        using var scope = NewDisposeScope();
        using var sae = SparseAutoencoder.Create(arch, 16, 40, k: 4, seed: 3);
        var sparsity = Enumerable.Range(0, 40).Select(i => -1f - i / 10f).ToArray();
        var info = new SaeInfo("blocks.1.hook_resid_post", "concepts", arch, 16, 40, arch == "topk" ? 4 : 0, "none", null)
        {
            ContextSize = 48, DatasetPath = "datasets/grammar", PrependBos = true, LogSparsity = sparsity,
        };

        var v6 = SaeLensFormat.Write(sae, info);
        var (a6, fields6, meta6) = LoadLikeSaeLens6(Encoding.UTF8.GetString(v6["cfg.json"]));
        Assert.Equal(arch, a6);
        Assert.Equal("blocks.1.hook_resid_post", meta6["hook_name"]!.GetValue<string>());
        Assert.Equal("concepts", meta6["model_name"]!.GetValue<string>());
        Assert.Equal(SaeLensFormat.SaeLensVersion, meta6["sae_lens_version"]!.GetValue<string>());
        Assert.Equal(48, meta6["context_size"]!.GetValue<int>());
        Assert.Equal("datasets/grammar", meta6["dataset_path"]!.GetValue<string>());
        Assert.Equal((16, 40, "none", "none", true), (fields6["d_in"]!.GetValue<int>(), fields6["d_sae"]!.GetValue<int>(),
            fields6["normalize_activations"]!.GetValue<string>(), fields6["reshape_activations"]!.GetValue<string>(), fields6["apply_b_dec_to_input"]!.GetValue<bool>()));
        if (arch == "topk")
            Assert.Equal((4, false), (fields6["k"]!.GetValue<int>(), fields6["rescale_acts_by_decoder_norm"]!.GetValue<bool>()));
        // sparsity.safetensors: one tensor "sparsity" [d_sae] (constants.py:15, sae_trainer.py:212-214), read back.
        var sparsityFile = SafeTensors.Read(v6["sparsity.safetensors"], "sparsity");
        Assert.Equal(["sparsity"], sparsityFile.Keys);
        Assert.Equal(sparsity, sparsityFile["sparsity"].data<float>().ToArray());
        var (back, backInfo) = SaeLensFormat.Read(v6, "back");
        using (back)
        {
            Assert.Equal(sparsity, backInfo.LogSparsity);
            var x = randn(8, 16);
            Close(sae.Encode(x), back.Encode(x), "round trip");
        }

        var v5 = SaeLensFormat.Write(sae, info, SaeLensLayout.V5);
        var fields5 = LoadLikeSaeLens5(Encoding.UTF8.GetString(v5["cfg.json"]));
        Assert.Equal(("blocks.1.hook_resid_post", "concepts", 1, arch), (fields5["hook_name"]!.GetValue<string>(), fields5["model_name"]!.GetValue<string>(),
            fields5["hook_layer"]!.GetValue<int>(), fields5["architecture"]!.GetValue<string>()));
        if (arch == "topk")
            Assert.Equal(("topk", 4), (fields5["activation_fn_str"]!.GetValue<string>(), fields5["activation_fn_kwargs"]!["k"]!.GetValue<int>()));
        var (a56, fields56, meta56) = LoadLikeSaeLens6(Encoding.UTF8.GetString(v5["cfg.json"]));
        Assert.Equal((arch, "blocks.1.hook_resid_post", "concepts"), (a56, meta56["hook_name"]!.GetValue<string>(), meta56["model_name"]!.GetValue<string>()));
        if (arch == "topk")
            Assert.Equal(4, fields56["k"]!.GetValue<int>());
        var (back5, back5Info) = SaeLensFormat.Read(v5, "back5");
        using (back5)
            Assert.Equal(("blocks.1.hook_resid_post", "concepts", arch, "saelens-pre-6"), (back5Info.HookName, back5Info.ModelName, back5.Architecture, back5Info.Layout));

        // The layout before this change: metadata without sae_lens_version. SAELens 6 rebuilds metadata from the top level and loses the names.
        var old = JsonNode.Parse(v6["cfg.json"])!.AsObject();
        old["metadata"]!.AsObject().Remove("sae_lens_version");
        var (_, _, oldMeta) = LoadLikeSaeLens6(old.ToJsonString());
        Assert.Null(oldMeta["hook_name"]);
        Assert.Null(oldMeta["model_name"]);
        // And the old layout fails in 5.x for want of required fields.
        Assert.Throws<InvalidOperationException>(() => LoadLikeSaeLens5(old.ToJsonString()));
    }

    [Fact]
    public void Every_architecture_read_is_written_back_and_reads_the_same()
    {
        using var scope = NewDisposeScope();
        foreach (var arch in new[] { "jumprelu", "gated", "skip_transcoder", "jumprelu_transcoder" })
        {
            bool transcoder = arch.EndsWith("transcoder", StringComparison.Ordinal);
            var w = Weights(arch, 8, 12, 5, transcoder ? 6 : null);
            var cfg = Cfg6(arch, 8, 12, "blocks.0.hook_resid_mid", applyBDec: !transcoder, dOut: transcoder ? 6 : null, hookOut: transcoder ? "blocks.0.hook_mlp_out" : null);
            var (sae, info) = SaeLensFormat.Read(Folder(cfg, w), arch);
            using (sae)
            {
                var written = SaeLensFormat.Write(sae, info);
                var (_, _, meta) = LoadLikeSaeLens6(Encoding.UTF8.GetString(written["cfg.json"]));
                if (transcoder)
                    Assert.Equal("blocks.0.hook_mlp_out", meta["hook_name_out"]!.GetValue<string>());
                var (again, _) = SaeLensFormat.Read(written, arch + "-again");
                using (again)
                {
                    var x = randn(5, 8);
                    Close(sae.Forward(x).Output, again.Forward(x).Output, arch);
                }
            }
        }
        using var transcoderSae = SaeLensFormat.Read(Folder(Cfg6("transcoder", 8, 12, "a", applyBDec: false, dOut: 6, hookOut: "b"), Weights("transcoder", 8, 12, 5, 6)), "t").Sae;
        var e = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Write(transcoderSae, new SaeInfo("a", null, "transcoder", 8, 12, 0, "none", null) { HookNameOut = "b" }, SaeLensLayout.V5));
        Assert.Contains("SAELens 5.x has no transcoder", e.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, string> RefusedConfigs => new()
    {
        { """{"architecture": "batchtopk", "metadata": {"sae_lens_version": "6.18.0", "hook_name": "h"}}""", "architecture 'batchtopk' is a SAELens training checkpoint" },
        { """{"architecture": "crosscoder", "hook_name": "h"}""", "architecture 'crosscoder' is not supported" },
        { """{"hook_name": "h", "normalize_activations": "whiten"}""", "normalize_activations 'whiten' is not supported" },
        { """{"hook_name": "h", "reshape_activations": "hook_q"}""", "reshape_activations 'hook_q' is not supported" },
        { """{"hook_name": "blocks.0.hook_resid_post", "reshape_activations": "hook_z"}""", "reshape_activations 'hook_z' needs a hook_z hook" },
        { """{"hook_name": "h", "activation_fn_str": "tanh-relu"}""", "activation_fn 'tanh-relu' is not supported" },
        { """{"hook_name": "h", "activation_fn": "topk"}""", "activation_fn 'topk' needs activation_fn_kwargs.k" },
        { """{"hook_name": "h", "activation_fn": "topk", "activation_fn_kwargs": {"k": 2}, "architecture": "jumprelu"}""", "activation_fn 'topk' contradicts architecture 'jumprelu'" },
        { """{"hook_name": "h", "rescale_acts_by_decoder_norm": true}""", "rescale_acts_by_decoder_norm true is defined for topk only" },
        { """{"architecture": "transcoder", "d_out": 8, "apply_b_dec_to_input": false, "metadata": {"sae_lens_version": "6.18.0", "hook_name": "h"}}""", "a transcoder needs metadata.hook_name_out" },
        { """{"architecture": "transcoder", "d_out": 8, "apply_b_dec_to_input": true, "metadata": {"sae_lens_version": "6.18.0", "hook_name": "h", "hook_name_out": "o"}}""", "apply_b_dec_to_input true is not defined for a transcoder" },
        { """{"architecture": "transcoder", "d_out": 8, "apply_b_dec_to_input": false, "normalize_activations": "layer_norm", "metadata": {"sae_lens_version": "6.18.0", "hook_name": "h", "hook_name_out": "o"}}""", "normalize_activations 'layer_norm' is not supported for a transcoder" },
        { """{"architecture": "transcoder", "d_out": 8, "apply_b_dec_to_input": false, "metadata": {"sae_lens_version": "6.18.0", "hook_name": "h", "hook_name_out": "o", "hook_head_index_out": 1}}""", "metadata.hook_head_index_out 1 is not supported" },
        { """{"metadata": {"sae_lens_version": "6.18.0", "hook_name": "h", "hook_name_out": "o"}}""", "metadata.hook_name_out 'o' differs from the hook, which only transcoders may do" },
        { """{"hook_name": "h", "dtype": "int8"}""", "dtype 'int8' is not supported" },
        { """{"metadata": {"sae_lens_version": "latest", "hook_name": "h"}}""", "sae_lens_version 'latest' is not a version number" },
        { """{"hook_name": "h", "normalize_activations": "expected_average_only_in"}""", "normalize_activations 'expected_average_only_in' but the folder has no scale" },
        { """{"hook_name": "h", "finetuning_scaling_factor": "yes"}""", "finetuning_scaling_factor must be true or false" },
        { """{"hook_name": "h", "metadata": ["hook_name"]}""", "metadata must be an object" },
        { """{"hook_name": "h", "activation_fn": "topk", "activation_fn_kwargs": 3}""", "activation_fn_kwargs must be an object" },
        { """{"architecture": "transcoder", "d_out": 0, "apply_b_dec_to_input": false, "metadata": {"sae_lens_version": "6.18.0", "hook_name": "h", "hook_name_out": "o"}}""", "d_out (0) must be positive" },
        { """{"architecture": "skip_transcoder", "d_out": 8, "apply_b_dec_to_input": false, "reshape_activations": "hook_z", "metadata": {"sae_lens_version": "6.18.0", "hook_name": "blocks.0.attn.hook_z", "hook_name_out": "o"}}""", "reshape_activations / hook_head_index are not supported for a skip_transcoder" },
        { """{"hook_name": "blocks.0.attn.hook_z", "hook_head_index": -1}""", "hook_head_index -1 must be 0 or more" },
        { """{"hook_name": "h", "normalize_activations": "layer_norm", "interpmesh_norm_scale": 2.0}""", "interpmesh_norm_scale with normalize_activations 'layer_norm' is contradictory" },
    };

    [Theory]
    [MemberData(nameof(RefusedConfigs))]
    public void Configs_that_cannot_be_honoured_are_refused_by_name(string cfgJson, string message)
    {
        using var scope = NewDisposeScope();
        var cfg = JsonNode.Parse(cfgJson)!.AsObject();
        cfg["d_in"] = 8;
        cfg["d_sae"] = 12;
        var e = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(Folder(cfg, Weights("standard", 8, 12, 1)), "f"));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Side_files_and_npz_archives_that_cannot_be_honoured_are_refused_by_name()
    {
        using var scope = NewDisposeScope();
        static void Refused(Action read, string message) => Assert.Contains(message, Assert.Throws<InvalidParametersException>(read).Message, StringComparison.Ordinal);
        var folder = Folder(Cfg6("standard", 8, 12, "h", normalize: "expected_average_only_in"), Weights("standard", 8, 12, 1));
        folder["activation_scaler.json"] = Encoding.UTF8.GetBytes("""{"scaling_factor": "big"}""");
        Refused(() => SaeLensFormat.Read(folder, "f"), "f/activation_scaler.json: scaling_factor must be a finite number");
        folder["activation_scaler.json"] = Encoding.UTF8.GetBytes("""{"scaling_factor": -2}""");
        Refused(() => SaeLensFormat.Read(folder, "f"), "the activation scale -2 must be positive");
        var plain = Folder(Cfg6("standard", 8, 12, "h"), Weights("standard", 8, 12, 1));
        plain["sparsity.safetensors"] = SafeTensorsBytes(new Dictionary<string, Tensor> { ["sparsity"] = zeros(12), ["other"] = zeros(2) });
        Refused(() => SaeLensFormat.Read(plain, "f"), "must hold one tensor, 'sparsity' (it has");
        Refused(() => SaeLensFormat.Read(new Dictionary<string, byte[]> { ["params.npz"] = [1, 2, 3] }, "gs", new SaeReadOptions("blocks.0.hook_resid_post")), "gs/params.npz is not a valid .npz (zip) file");
        Refused(() => SaeLensFormat.Read(new Dictionary<string, byte[]> { ["weights.bin"] = [1] }, "x"), "x is not an SAELens folder: it needs cfg.json and sae_weights.safetensors, or Gemma Scope's params.npz");
        Refused(() => Npz.ReadNpy([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "a.npy"), "a.npy is not an .npy array");
        using var dir = new TempDir();
        Python("""
            import numpy as np, sys, zipfile
            d = sys.argv[1]
            np.save(d + '/short.npy', np.ones((2, 3), dtype='<f4'))
            raw = open(d + '/short.npy', 'rb').read()
            open(d + '/short.npy', 'wb').write(raw[:-4])
            with zipfile.ZipFile(d + '/extra.npz', 'w') as z:
                z.writestr('notes.txt', 'hello')
            """, dir.Path);
        Refused(() => Npz.ReadNpy(File.ReadAllBytes(Path.Combine(dir.Path, "short.npy")), "short.npy"), "shape (2, 3) of '<f4' needs 24 bytes of data, the file has 20");
        Refused(() => Npz.Read(File.ReadAllBytes(Path.Combine(dir.Path, "extra.npz")), "extra.npz"), "extra.npz holds 'notes.txt', which is not an .npy array");
        var rescaled = SaeLensFormat.Read(Folder(Cfg6("topk", 8, 12, "h", k: 3, rescale: true), Weights("topk", 8, 12, 1)), "r").Sae;
        using (rescaled)
            Refused(() => SaeLensFormat.Write(rescaled, new SaeInfo("h", null, "topk", 8, 12, 3, "none", null), SaeLensLayout.V5), "SAELens 5.x has no rescale_acts_by_decoder_norm");
    }

    /// <summary>Gemma Scope embedding SAEs: SAELens divides W_enc by √d_in and multiplies W_dec by it (pretrained_sae_loaders.py:518-521).</summary>
    [Fact]
    public void A_Gemma_Scope_embedding_SAE_gets_SAELens_scale_adjustment()
    {
        using var scope = NewDisposeScope();
        var w = Weights("jumprelu", 16, 8, 4);
        var (npz, _, _) = GemmaScopeNpz(w, zeros(1, 16));
        var (sae, _) = SaeLensFormat.Read(new Dictionary<string, byte[]> { ["embedding/width_4k/average_l0_6/params.npz"] = npz }, "gemma-scope-2b-pt-res", new SaeReadOptions("hook_embed"));
        using (sae)
        {
            Close(w["W_enc"].div(S(4)), sae.WEnc, "W_enc / √16");
            Close(w["W_dec"].mul(S(4)), sae.WDec, "W_dec · √16");
        }
    }

    [Fact]
    public void Tensors_that_cannot_be_honoured_are_refused_by_name()
    {
        using var scope = NewDisposeScope();
        var cfg = JsonNode.Parse("""{"hook_name": "h", "d_in": 8, "d_sae": 12}""")!.AsObject();
        void Refused(Dictionary<string, byte[]> files, string message)
        {
            var e = Assert.Throws<InvalidParametersException>(() => SaeLensFormat.Read(files, "f"));
            Assert.Contains(message, e.Message, StringComparison.Ordinal);
        }
        Refused(Folder(cfg, new Dictionary<string, Tensor>(Weights("standard", 8, 12, 1)) { ["W_extra"] = zeros(3) }), "holds W_extra, which a 'standard' SAE does not have");
        Refused(Folder(cfg, new Dictionary<string, Tensor>(Weights("standard", 8, 12, 1)) { ["scaling_factor"] = full(12, S(2)) }), "scaling_factor is not all ones but finetuning_scaling_factor is false");
        var jumprelu = Cfg6("jumprelu", 8, 12, "h");
        Refused(Folder(jumprelu, Weights("standard", 8, 12, 1)), "lacks threshold (a 'jumprelu' SAE has");
        var withSparsity = Folder(cfg, Weights("standard", 8, 12, 1));
        withSparsity["sparsity.safetensors"] = SafeTensorsBytes(new Dictionary<string, Tensor> { ["sparsity"] = zeros(11) });
        Refused(withSparsity, "sparsity is [11], expected [12]");
    }
}
