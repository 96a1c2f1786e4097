using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// SAE folders built as SAELens writes them, an independent safetensors writer, the SAELens
/// forward passes written out again from its source, and config parsers that follow SAELens 6.x's
/// and 5.x's loading code. Line references are to jbloomAus/SAELens at v6.18.0 (commit 91ca16cc)
/// unless a tag is named.
/// </summary>
internal static class SaeLensFolders
{
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<double, TorchSharp.Scalar> Scalars = new();

    /// <summary>A scalar kept alive for the process (TorchSharp's implicit scalars can be freed by the finalizer during a call).</summary>
    public static TorchSharp.Scalar S(double value) => Scalars.GetOrAdd(value, v => v);

    /// <summary>A safetensors file (F32), written here from the format's definition rather than with the project's codec.</summary>
    public static byte[] SafeTensorsBytes(IReadOnlyDictionary<string, Tensor> tensors)
    {
        var header = new JsonObject();
        long offset = 0;
        var data = new List<float[]>();
        foreach (var (name, t) in tensors)
        {
            var values = t.contiguous().to_type(ScalarType.Float32).data<float>().ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray([.. t.shape.Select(d => (JsonNode)d)]),
                ["data_offsets"] = new JsonArray(offset, offset + 4L * values.Length),
            };
            offset += 4L * values.Length;
            data.Add(values);
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        var result = new byte[8 + padded + offset];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)padded);
        json.CopyTo(result, 8);
        for (int i = 8 + json.Length; i < 8 + padded; i++)
            result[i] = (byte)' ';
        long at = 8 + padded;
        foreach (var values in data)
        {
            foreach (float v in values)
            {
                BinaryPrimitives.WriteSingleLittleEndian(result.AsSpan((int)at), v);
                at += 4;
            }
        }
        return result;
    }

    /// <summary>
    /// SAELens 6.x's cfg.json: <c>SAEConfig.to_dict</c> (saes/sae.py:168-172: the dataclass fields,
    /// then metadata and architecture; TopK adds k and rescale_acts_by_decoder_norm,
    /// saes/topk_sae.py:149-150; transcoders d_out, saes/transcoder.py:18-53) with the metadata the
    /// training runner sets (llm_sae_training_runner.py:239-257, SAEMetadata's versions first, sae.py:67-70).
    /// </summary>
    public static JsonObject Cfg6(string architecture, int dIn, int dSae, string hook, bool applyBDec = true, string normalize = "none",
        string reshape = "none", int? k = null, bool rescale = false, int? dOut = null, string? hookOut = null, int? headIndex = null, string version = "6.18.0")
    {
        var cfg = new JsonObject
        {
            ["d_in"] = dIn, ["d_sae"] = dSae, ["dtype"] = "float32", ["device"] = "cpu",
            ["apply_b_dec_to_input"] = applyBDec, ["normalize_activations"] = normalize, ["reshape_activations"] = reshape,
        };
        if (dOut is int o)
            cfg["d_out"] = o;
        var metadata = new JsonObject
        {
            ["sae_lens_version"] = version, ["sae_lens_training_version"] = version, ["dataset_path"] = "monology/pile-uncopyrighted",
            ["hook_name"] = hook, ["model_name"] = "gpt2", ["model_class_name"] = "HookedTransformer", ["hook_head_index"] = headIndex,
            ["context_size"] = 128, ["seqpos_slice"] = new JsonArray((JsonNode?)null), ["model_from_pretrained_kwargs"] = new JsonObject(),
            ["prepend_bos"] = true, ["exclude_special_tokens"] = false, ["sequence_separator_token"] = "bos", ["disable_concat_sequences"] = false,
        };
        if (hookOut is not null)
        {
            metadata["hook_name_out"] = hookOut;
            metadata["hook_head_index_out"] = null;
        }
        cfg["metadata"] = metadata;
        if (k is int kk)
        {
            cfg["k"] = kk;
            cfg["rescale_acts_by_decoder_norm"] = rescale;
        }
        cfg["architecture"] = architecture;
        return cfg;
    }

    public static Dictionary<string, byte[]> Folder(JsonObject cfg, IReadOnlyDictionary<string, Tensor> weights) => new()
    {
        ["cfg.json"] = Encoding.UTF8.GetBytes(cfg.ToJsonString()),
        ["sae_weights.safetensors"] = SafeTensorsBytes(weights),
    };

    /// <summary>
    /// The state dict of each architecture (names and shapes as the SAELens classes register them),
    /// random: W_dec rows of norm ≠ 1 so decoder-norm rescaling matters, thresholds that gate some latents.
    /// </summary>
    public static Dictionary<string, Tensor> Weights(string architecture, int dIn, int dSae, long seed, int? dOut = null)
    {
        var g = new Generator((ulong)seed);
        int o = dOut ?? dIn;
        var w = new Dictionary<string, Tensor>
        {
            ["W_enc"] = randn([dIn, dSae], generator: g).mul(S(0.3)),
            ["W_dec"] = randn([dSae, o], generator: g).mul(S(0.3)),
            ["b_dec"] = randn([o], generator: g).mul(S(0.1)),
        };
        if (architecture == "gated")
        {
            w["b_gate"] = randn([dSae], generator: g).mul(S(0.1));
            w["r_mag"] = randn([dSae], generator: g).mul(S(0.2));
            w["b_mag"] = randn([dSae], generator: g).mul(S(0.1));
        }
        else
        {
            w["b_enc"] = randn([dSae], generator: g).mul(S(0.1));
        }
        if (architecture is "jumprelu" or "jumprelu_transcoder")
            w["threshold"] = rand([dSae], generator: g).mul(S(0.4));
        if (architecture == "skip_transcoder")
            w["W_skip"] = randn([o, dIn], generator: g).mul(S(0.2));
        return w;
    }

    /// <summary>
    /// SAELens' forward pass written out again: process_sae_in (sae.py:452-474: run-time norm,
    /// then − b_dec), the encoders (standard_sae.py; topk_sae.py:238-250 with TopK.forward 60-115;
    /// jumprelu_sae.py:133-151; gated_sae.py:52-73; transcoder.py: no b_dec, 104-127, JumpReLU
    /// 326-345, skip x W_skipᵀ 241), decode (f @ W_dec + b_dec, the run-time norm undone,
    /// sae.py:297-335; TopK divides f by ‖W_dec‖ first, topk_sae.py:262-263).
    /// </summary>
    public static (Tensor Features, Tensor Output) Reference(string arch, IReadOnlyDictionary<string, Tensor> w, Tensor x,
        bool applyBDec = true, string normalize = "none", int k = 0, bool rescale = false)
    {
        bool transcoder = arch.EndsWith("transcoder", StringComparison.Ordinal);
        var input = x;
        Tensor? coeff = null, mu = null, std = null;
        if (normalize == "constant_norm_rescale")
        {
            coeff = x.norm(-1, keepdim: true).reciprocal().mul(S(Math.Sqrt(x.shape[^1])));
            input = x * coeff;
        }
        else if (normalize == "layer_norm")
        {
            mu = x.mean([-1L], keepdim: true);
            var c = x - mu;
            std = c.std(-1, unbiased: true, keepdim: true);
            input = c / std.add(S(1e-5));
        }
        var sae = !transcoder && applyBDec ? input - w["b_dec"] : input;
        Tensor f;
        if (arch == "gated")
        {
            var gate = (sae.matmul(w["W_enc"]) + w["b_gate"]).gt(S(0)).to_type(ScalarType.Float32);
            f = gate * (sae.matmul(w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]).relu();
        }
        else
        {
            var pre = sae.matmul(w["W_enc"]) + w["b_enc"];
            if (arch == "topk")
            {
                if (rescale)
                    pre = pre * w["W_dec"].norm(-1);
                var top = pre.topk(k, -1);
                f = zeros_like(pre).scatter(-1, top.indexes, top.values.relu());
            }
            else
            {
                f = pre.relu();
                if (w.TryGetValue("threshold", out var th))
                    f = f * pre.gt(th).to_type(ScalarType.Float32);
            }
        }
        var acts = arch == "topk" && rescale ? f / w["W_dec"].norm(-1) : f;
        var output = acts.matmul(w["W_dec"]) + w["b_dec"];
        if (coeff is not null)
            output = output / coeff;
        if (std is not null)
            output = output * std + mu!;
        if (w.TryGetValue("W_skip", out var skip))
            output = output + x.matmul(skip.t());
        return (f, output);
    }

    private static readonly string[] LlmMetadataKeys =
    [
        "model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
        "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path", "sae_lens_version", "sae_lens_training_version", "hook_name_out", "hook_head_index_out",
    ];

    private static readonly Dictionary<string, string[]> FieldsByArchitecture = new()
    {
        ["standard"] = [], ["jumprelu"] = [], ["gated"] = [], ["topk"] = ["k", "rescale_acts_by_decoder_norm"],
        ["transcoder"] = ["d_out"], ["skip_transcoder"] = ["d_out"], ["jumprelu_transcoder"] = ["d_out"],
    };

    private static readonly string[] BaseFields = ["d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations", "reshape_activations"];

    private static int[] VersionParts(string v) => [.. v.Split('-')[0].Split('.').Select(int.Parse)];

    /// <summary>
    /// What <c>SAE.load_from_disk</c> (sae.py:545-563) makes of a cfg.json in SAELens 6.x:
    /// <c>handle_config_defaulting</c> (loading/pretrained_sae_loaders.py:201-208: the version from
    /// the top level or metadata; none or &lt; 6.0.0-rc.0 ⇒ <c>handle_pre_6_0_config</c>, 211-270,
    /// which renames keys, sets defaults and rebuilds metadata from the top-level LLM_METADATA_KEYS,
    /// 33-49), then <c>SAEConfig.from_dict</c> (sae.py:175-185: only the architecture's dataclass
    /// fields, metadata as given) and <c>__post_init__</c>'s normalisation check (187-196).
    /// Returns (architecture, the config's fields, metadata).
    /// </summary>
    public static (string Architecture, JsonObject Fields, JsonObject Metadata) LoadLikeSaeLens6(string cfgJson)
    {
        var cfg = JsonNode.Parse(cfgJson)!.AsObject();
        string? version = cfg["sae_lens_version"]?.GetValue<string>() ?? (cfg["metadata"] as JsonObject)?["sae_lens_version"]?.GetValue<string>();
        bool pre6 = version is null || VersionParts(version)[0] < 6;
        if (pre6)
        {
            var renames = new Dictionary<string, string> { ["hook_point"] = "hook_name", ["hook_point_head_index"] = "hook_head_index", ["activation_fn_str"] = "activation_fn" };
            var n = new JsonObject();
            foreach (var (key, value) in cfg)
                n[renames.GetValueOrDefault(key, key)] = value?.DeepClone();
            void Default(string key, JsonNode? value)
            {
                if (!n.ContainsKey(key))
                    n[key] = value;
            }
            Default("prepend_bos", true);
            Default("apply_b_dec_to_input", true);
            Default("sae_lens_training_version", null);
            Default("activation_fn", "relu");
            Default("architecture", "standard");
            Default("neuronpedia_id", null);
            Default("reshape_activations", (n["hook_name"]?.GetValue<string>() ?? "").Contains("hook_z") ? "hook_z" : "none");
            if (n["activation_fn"]?.GetValue<string>() == "topk" && n["activation_fn_kwargs"]?["k"] is { } kk)
            {
                n["architecture"] = "topk";
                n["k"] = kk.DeepClone();
            }
            if (n["normalize_activations"] is JsonValue b && b.TryGetValue(out bool flag))
                n["normalize_activations"] = flag ? "expected_average_only_in" : "none";
            if (n["normalize_activations"] is null)
                n["normalize_activations"] = "none";
            Default("device", "cpu");
            var rebuilt = new JsonObject();
            foreach (var (key, value) in n)
            {
                if (LlmMetadataKeys.Contains(key))
                    rebuilt[key] = value?.DeepClone();
            }
            n["metadata"] = rebuilt;
            cfg = n;
        }
        string arch = cfg["architecture"]!.GetValue<string>();
        if (!FieldsByArchitecture.TryGetValue(arch, out var extra))
            throw new InvalidOperationException($"SAELens 6 has no inference class for '{arch}'");
        var fields = new JsonObject();
        foreach (var key in BaseFields.Concat(extra))
        {
            if (cfg[key] is { } v)
                fields[key] = v.DeepClone();
        }
        if (fields["d_in"] is null || fields["d_sae"] is null)
            throw new InvalidOperationException("SAEConfig() missing d_in or d_sae");
        string normalize = fields["normalize_activations"]?.GetValue<string>() ?? "none";
        if (normalize is not ("none" or "expected_average_only_in" or "constant_norm_rescale" or "layer_norm"))
            throw new InvalidOperationException($"normalize_activations must be ... Got {normalize}");
        // SAEMetadata(**metadata): missing versions default to the running version.
        var metadata = (cfg["metadata"] as JsonObject)?.DeepClone().AsObject() ?? [];
        return (arch, fields, metadata);
    }

    /// <summary>
    /// What SAELens 5.11 makes of a cfg.json: <c>handle_config_defaulting</c> (v5.11.0
    /// toolkit/pretrained_sae_loaders.py:177-201), then <c>SAEConfig.from_dict</c> (v5.11.0
    /// sae.py:79-97: renames, only dataclass fields) and the dataclass constructor, which requires
    /// every field without a default (sae.py:45-72). Returns the config's fields.
    /// </summary>
    public static JsonObject LoadLikeSaeLens5(string cfgJson)
    {
        var cfg = JsonNode.Parse(cfgJson)!.AsObject();
        void Default(string key, JsonNode? value)
        {
            if (!cfg.ContainsKey(key))
                cfg[key] = value;
        }
        Default("prepend_bos", true);
        Default("dataset_trust_remote_code", true);
        Default("apply_b_dec_to_input", true);
        Default("finetuning_scaling_factor", false);
        Default("sae_lens_training_version", null);
        Default("activation_fn_str", cfg["activation_fn"]?.DeepClone() ?? "relu");
        Default("architecture", "standard");
        Default("neuronpedia_id", null);
        if (cfg["normalize_activations"] is JsonValue b && b.TryGetValue(out bool flag))
            cfg["normalize_activations"] = flag ? "expected_average_only_in" : "none";
        Default("normalize_activations", "none");
        Default("device", "cpu");
        var renames = new Dictionary<string, string> { ["hook_point"] = "hook_name", ["hook_point_head_index"] = "hook_head_index", ["hook_point_layer"] = "hook_layer", ["activation_fn"] = "activation_fn_str" };
        string[] required = ["architecture", "d_in", "d_sae", "activation_fn_str", "apply_b_dec_to_input", "finetuning_scaling_factor", "context_size", "model_name",
            "hook_name", "hook_layer", "hook_head_index", "prepend_bos", "dataset_path", "dataset_trust_remote_code", "normalize_activations", "dtype", "device", "sae_lens_training_version"];
        string[] optional = ["activation_fn_kwargs", "neuronpedia_id", "model_from_pretrained_kwargs", "seqpos_slice"];
        var fields = new JsonObject();
        foreach (var (key, value) in cfg)
        {
            string name = renames.GetValueOrDefault(key, key);
            if (required.Contains(name) || optional.Contains(name))
                fields[name] = value?.DeepClone();
        }
        var missing = required.Where(r => !fields.ContainsKey(r)).ToList();
        if (missing.Count > 0)
            throw new InvalidOperationException($"SAEConfig.__init__() missing required arguments: {string.Join(", ", missing)}");
        if (fields["activation_fn_str"]!.GetValue<string>() == "topk" && fields["activation_fn_kwargs"]?["k"] is null)
            throw new InvalidOperationException("TopK activation function requires a k value.");
        return fields;
    }

    /// <summary>Runs /usr/bin/python3 on a script (numpy is on the machine); returns stdout, fails the test on a non-zero exit.</summary>
    public static string Python(string script, params string[] args)
    {
        Assert.True(File.Exists("/usr/bin/python3"), "Debian's python3 is missing");
        var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(script);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"python failed (needs Debian's python3-numpy, which .ci/run installs with python3-sklearn):\n{stderr}");
        return stdout.Result;
    }

    /// <summary>A temporary folder (interpmesh- prefix) deleted on dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "interpmesh-sae-" + Guid.NewGuid().ToString("N"));

        public TempDir() => Directory.CreateDirectory(Path);

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }

    /// <summary>
    /// A Gemma Scope params.npz (np.savez of W_enc, W_dec, b_enc, b_dec, threshold as float32, the
    /// arrays the official repositories hold) from these weights, written by numpy; and numpy's own
    /// JumpReLU encoding of <paramref name="x"/> (pre = x W_enc + b_enc, b_dec not subtracted:
    /// pretrained_sae_loaders.py:451; f = ReLU(pre)·[pre &gt; threshold]) and reconstruction.
    /// </summary>
    public static (byte[] Npz, float[] Features, float[] Output) GemmaScopeNpz(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        using var dir = new TempDir();
        var all = new Dictionary<string, Tensor>(w) { ["x"] = x };
        File.WriteAllBytes(System.IO.Path.Combine(dir.Path, "in.safetensors"), SafeTensorsBytes(all));
        const string script = """
            import json, struct, sys, numpy as np
            d = sys.argv[1]
            raw = open(d + '/in.safetensors', 'rb').read()
            n = struct.unpack('<Q', raw[:8])[0]
            header = json.loads(raw[8:8 + n])
            arrays = {k: np.frombuffer(raw[8 + n + v['data_offsets'][0]: 8 + n + v['data_offsets'][1]], dtype='<f4').reshape(v['shape'])
                      for k, v in header.items()}
            x = arrays.pop('x')
            np.savez(d + '/params.npz', **arrays)
            pre = x @ arrays['W_enc'] + arrays['b_enc']
            f = np.maximum(pre, 0) * (pre > arrays['threshold'])
            out = f @ arrays['W_dec'] + arrays['b_dec']
            f.astype('<f4').tofile(d + '/f.bin')
            out.astype('<f4').tofile(d + '/out.bin')
            """;
        Python(script, dir.Path);
        static float[] Floats(byte[] b) => [.. Enumerable.Range(0, b.Length / 4).Select(i => BinaryPrimitives.ReadSingleLittleEndian(b.AsSpan(i * 4)))];
        return (File.ReadAllBytes(System.IO.Path.Combine(dir.Path, "params.npz")),
            Floats(File.ReadAllBytes(System.IO.Path.Combine(dir.Path, "f.bin"))),
            Floats(File.ReadAllBytes(System.IO.Path.Combine(dir.Path, "out.bin"))));
    }
}
