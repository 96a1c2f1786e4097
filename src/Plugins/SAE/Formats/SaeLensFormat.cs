using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using InterpMesh.Plugins.SAE.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.SAE.Formats;

/// <summary>What an SAE folder says about where it belongs.</summary>
/// <param name="HookName">The hook the SAE reads (a transcoder's input hook).</param>
/// <param name="ModelName">The model it was trained on, if known.</param>
/// <param name="Architecture">SAELens' architecture name.</param>
/// <param name="DIn">Input width.</param>
/// <param name="DSae">Latents.</param>
/// <param name="K">TopK's k (0 otherwise).</param>
/// <param name="NormalizeActivations">The normalisation as trained: none, expected_average_only_in, constant_norm_rescale or layer_norm.</param>
/// <param name="NormScale">An input scale not folded into the weights (expected_average_only_in), or null.</param>
internal sealed record SaeInfo(string HookName, string? ModelName, string Architecture, int DIn, int DSae, int K, string NormalizeActivations, double? NormScale)
{
    /// <summary>A transcoder's output hook (<c>metadata.hook_name_out</c>); null for SAEs.</summary>
    public string? HookNameOut { get; init; }

    /// <summary>The head the SAE reads at a per-head hook (<c>metadata.hook_head_index</c>), or null.</summary>
    public int? HookHeadIndex { get; init; }

    /// <summary><c>reshape_activations: hook_z</c>: [..., head, d_head] flattened to [..., head·d_head].</summary>
    public bool ReshapeHookZ { get; init; }

    /// <summary>log10 of each latent's firing frequency (<c>sparsity.safetensors</c>), or null.</summary>
    public float[]? LogSparsity { get; init; }

    public int? ContextSize { get; init; }

    public string? DatasetPath { get; init; }

    public bool PrependBos { get; init; } = true;

    /// <summary>The layout read: <c>saelens-6</c>, <c>saelens-pre-6</c> or <c>gemma-scope</c>.</summary>
    public string Layout { get; init; } = "saelens-6";

    /// <summary>A scale folded into the weights while reading (an unfolded expected_average_only_in file), or null.</summary>
    public double? FoldedScale { get; init; }

    /// <summary>The hook the SAE writes: <see cref="HookNameOut"/> for transcoders, else <see cref="HookName"/>.</summary>
    public string OutputHook => HookNameOut ?? HookName;
}

/// <summary>Which SAELens config to write.</summary>
internal enum SaeLensLayout
{
    /// <summary>SAELens 6.x: top-level SAE fields, <c>metadata</c> with <c>sae_lens_version</c>, hook and model.</summary>
    V6,

    /// <summary>SAELens 5.x: the flat config (hook_name, hook_layer, model_name, activation_fn_str, … at the top); 6.x reads it too, as pre-6.0.</summary>
    V5,
}

/// <summary>How to read a folder.</summary>
/// <param name="Hook">The hook, for folders that name none (Gemma Scope's params.npz).</param>
/// <param name="NormScalingFactor">The scale of an expected_average_only_in SAE whose folder does not carry it.</param>
/// <param name="FoldScale">Fold an unfolded scale into the weights (false: keep it in <see cref="SaeInfo.NormScale"/>, for resuming training).</param>
internal sealed record SaeReadOptions(string? Hook = null, double? NormScalingFactor = null, bool FoldScale = true);

/// <summary>
/// The SAELens on-disk layout: <c>cfg.json</c> + <c>sae_weights.safetensors</c> (+ optional
/// <c>sparsity.safetensors</c>, <c>activation_scaler.json</c>), and Gemma Scope's
/// <c>params.npz</c>. Reads configs of every SAELens version (6.x: decided by
/// <c>metadata.sae_lens_version</c> as SAELens' <c>handle_config_defaulting</c> does; older flat
/// ones with their renames and defaults) for the architectures <see cref="SparseAutoencoder"/>
/// computes; anything it cannot honour is refused by name. Writes the 6.x config (or the 5.x one),
/// with an expected_average_only_in scale folded into the weights.
/// </summary>
internal static partial class SaeLensFormat
{
    public const string Config = "cfg.json";
    public const string Weights = "sae_weights.safetensors";
    public const string Sparsity = "sparsity.safetensors";
    public const string ActivationScaler = "activation_scaler.json";
    public const string GemmaScopeParams = "params.npz";

    /// <summary>The SAELens release whose layout <see cref="Write"/> follows.</summary>
    public const string SaeLensVersion = "6.18.0";

    private static readonly string[] Normalizations = ["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"];
    private static readonly string[] DTypes = ["float32", "float64", "float16", "bfloat16", "torch.float32", "torch.float64", "torch.float16", "torch.bfloat16"];

    public static (SparseAutoencoder Sae, SaeInfo Info) Read(IReadOnlyDictionary<string, byte[]> files, string where, SaeReadOptions? options = null)
    {
        options ??= new SaeReadOptions();
        if (!files.ContainsKey(Config))
        {
            var npz = files.Keys.Where(f => f == GemmaScopeParams || f.EndsWith("/" + GemmaScopeParams, StringComparison.Ordinal)).ToList();
            if (npz.Count == 1)
                return ReadGemmaScope(files[npz[0]], npz[0], where, options);
            throw new InvalidParametersException($"{where} is not an SAELens folder: it needs {Config} and {Weights}, or Gemma Scope's {GemmaScopeParams} (it has {string.Join(", ", files.Keys)})");
        }
        if (!files.TryGetValue(Weights, out var weights))
            throw new InvalidParametersException($"{where} is not an SAELens folder: it needs {Config} and {Weights} (it has {string.Join(", ", files.Keys)})");
        var c = new ConfigReader(ParseObject(files[Config], $"{where}/{Config}"), $"{where}/{Config}");
        return ReadSaeLens(c, files, weights, where, options);
    }

    private static JsonObject ParseObject(byte[] bytes, string where)
    {
        // JsonNode checks UTF-8 only when a string is read (InvalidOperationException then).
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
            throw new InvalidParametersException($"{where} is not valid UTF-8 text; it must be a UTF-8 JSON object");
        try
        {
            // Duplicate keys are refused while parsing; JsonObject would otherwise throw
            // ArgumentException on first access.
            return JsonNode.Parse(bytes, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject
                ?? throw new InvalidOperationException("the top level is not an object");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new InvalidParametersException($"{where} is not a JSON object: {e.Message}");
        }
    }

    /// <summary>Typed reads that name the field (GetValue on a value of another JSON type would throw a non-parameter exception).</summary>
    private sealed class ConfigReader(JsonObject cfg, string where)
    {
        public JsonObject Cfg => cfg;
        public string Where => where;
        public JsonObject? Meta { get; set; }

        /// <summary>A key from metadata (6.x) or the top level (older configs and our own pre-1.2 output).</summary>
        public JsonNode? Find(string key) => Meta?[key] ?? cfg[key];

        public InvalidParametersException Wrong(string field, JsonNode node, string expected) =>
            new($"{where}: {field} must be {expected}, got {Shorten(node.ToJsonString())}");

        public string? Text(JsonNode? node, string field) =>
            node is null ? null : node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : throw Wrong(field, node, "a string");

        public int? Int(JsonNode? node, string field) =>
            node is null ? null : node is JsonValue v && v.TryGetValue(out int i) ? i : throw Wrong(field, node, "an integer (32-bit)");

        public bool? Bool(JsonNode? node, string field) =>
            node is null ? null : node.GetValueKind() is JsonValueKind.True or JsonValueKind.False ? node.GetValue<bool>() : throw Wrong(field, node, "true or false");

        public double? Number(JsonNode? node, string field) =>
            node is null ? null : node is JsonValue v && v.TryGetValue(out double d) && double.IsFinite(d) ? d : throw Wrong(field, node, "a finite number");
    }

    private static (SparseAutoencoder Sae, SaeInfo Info) ReadSaeLens(ConfigReader c, IReadOnlyDictionary<string, byte[]> files, byte[] weights, string where, SaeReadOptions options)
    {
        var cfg = c.Cfg;
        if (cfg["metadata"] is { } metaNode)
            c.Meta = metaNode as JsonObject ?? throw c.Wrong("metadata", metaNode, "an object");
        // SAELens' handle_config_defaulting: the version at the top or in metadata; none or < 6.0 ⇒ the pre-6.0 conversion.
        string? version = c.Text(cfg["sae_lens_version"], "sae_lens_version") ?? c.Text(c.Meta?["sae_lens_version"], "metadata.sae_lens_version");
        bool v6 = version is not null && Major(version, c) >= 6;

        string hook = c.Text(c.Find("hook_name"), "hook_name") ?? c.Text(cfg["hook_point"], "hook_point") ?? options.Hook
            ?? throw new InvalidParametersException($"{c.Where} names no hook (metadata.hook_name, hook_name or hook_point)");
        string? model = c.Text(c.Find("model_name"), "model_name");
        int dIn = c.Int(cfg["d_in"], "d_in") ?? throw new InvalidParametersException($"{c.Where} has no d_in");
        int dSae = c.Int(cfg["d_sae"], "d_sae") ?? throw new InvalidParametersException($"{c.Where} has no d_sae");
        if (dIn <= 0 || dSae <= 0)
            throw new InvalidParametersException($"{c.Where}: d_in ({dIn}) and d_sae ({dSae}) must be positive");
        string? dtype = c.Text(cfg["dtype"], "dtype");
        if (dtype is not null && !DTypes.Contains(dtype))
            throw new InvalidParametersException($"{c.Where}: dtype '{dtype}' is not supported; use one of {string.Join(", ", DTypes)}");

        // Architecture: explicit, or (pre-6.0) from activation_fn / activation_fn_str.
        string? activation = c.Text(cfg["activation_fn"], "activation_fn") ?? c.Text(cfg["activation_fn_str"], "activation_fn_str");
        string? arch = c.Text(cfg["architecture"], "architecture");
        var kwargs = cfg["activation_fn_kwargs"];
        if (kwargs is not null and not JsonObject)
            throw c.Wrong("activation_fn_kwargs", kwargs, "an object");
        int? kwK = c.Int((kwargs as JsonObject)?["k"], "activation_fn_kwargs.k");
        if (activation is not null and not ("relu" or "topk"))
            throw new InvalidParametersException($"{c.Where}: activation_fn '{activation}' is not supported (relu and topk are)");
        if (activation == "topk" && arch is null or "standard" or "topk")
        {
            if (kwK is null && c.Int(cfg["k"], "k") is null)
                throw new InvalidParametersException($"{c.Where}: activation_fn 'topk' needs activation_fn_kwargs.k (or k)");
            arch = "topk";
        }
        else if (activation == "topk")
        {
            throw new InvalidParametersException($"{c.Where}: activation_fn 'topk' contradicts architecture '{arch}'");
        }
        arch ??= "standard";
        if (arch is "batchtopk" or "matryoshka_batchtopk")
            throw new InvalidParametersException($"{c.Where}: architecture '{arch}' is a SAELens training checkpoint; SAELens saves the trained SAE as jumprelu (save_inference_model), which is read");
        if (!SparseAutoencoder.Architectures.Contains(arch))
            throw new InvalidParametersException($"{c.Where}: architecture '{arch}' is not supported ({string.Join(", ", SparseAutoencoder.Architectures)} are)");
        bool transcoder = arch.EndsWith("transcoder", StringComparison.Ordinal);
        // TopKSAEConfig's default k is 100.
        int k = arch == "topk" ? c.Int(cfg["k"], "k") ?? kwK ?? 100 : 0;
        bool rescale = c.Bool(cfg["rescale_acts_by_decoder_norm"], "rescale_acts_by_decoder_norm") ?? false;
        if (rescale && arch != "topk")
            throw new InvalidParametersException($"{c.Where}: rescale_acts_by_decoder_norm true is defined for topk only, not '{arch}'");

        // normalize_activations: pre-6.0 booleans map false → none, true → expected_average_only_in; null → none.
        var normNode = cfg["normalize_activations"];
        string normalize = normNode is null || normNode.GetValueKind() == JsonValueKind.Null ? "none"
            : normNode.GetValueKind() is JsonValueKind.True or JsonValueKind.False ? (normNode.GetValue<bool>() ? "expected_average_only_in" : "none")
            : c.Text(normNode, "normalize_activations")!;
        if (!Normalizations.Contains(normalize))
            throw new InvalidParametersException($"{c.Where}: normalize_activations '{normalize}' is not supported ({string.Join(", ", Normalizations)} are)");

        // reshape_activations: 6.x default none; pre-6.0 default hook_z when the hook name contains hook_z.
        string reshape = c.Text(cfg["reshape_activations"], "reshape_activations") ?? (!v6 && hook.Contains("hook_z", StringComparison.Ordinal) ? "hook_z" : "none");
        if (reshape is not ("none" or "hook_z"))
            throw new InvalidParametersException($"{c.Where}: reshape_activations '{reshape}' is not supported (none and hook_z are)");
        if (reshape == "hook_z" && !hook.EndsWith("_z", StringComparison.Ordinal))
            throw new InvalidParametersException($"{c.Where}: reshape_activations 'hook_z' needs a hook_z hook, not '{hook}'");
        int? headIndex = c.Int(c.Find("hook_head_index") ?? cfg["hook_point_head_index"], "hook_head_index");
        if (headIndex < 0)
            throw new InvalidParametersException($"{c.Where}: hook_head_index {headIndex} must be 0 or more");

        string? hookOut = c.Text(c.Find("hook_name_out"), "metadata.hook_name_out");
        if (c.Int(c.Find("hook_head_index_out"), "metadata.hook_head_index_out") is int headOut)
            throw new InvalidParametersException($"{c.Where}: metadata.hook_head_index_out {headOut} is not supported (transcoders into one head)");
        int dOut = dIn;
        if (transcoder)
        {
            if (hookOut is null)
                throw new InvalidParametersException($"{c.Where}: a {arch} needs metadata.hook_name_out (the hook it writes)");
            // TranscoderConfig's default d_out is 768.
            dOut = c.Int(cfg["d_out"], "d_out") ?? 768;
            if (dOut <= 0)
                throw new InvalidParametersException($"{c.Where}: d_out ({dOut}) must be positive");
            if (c.Bool(cfg["apply_b_dec_to_input"], "apply_b_dec_to_input") == true)
                throw new InvalidParametersException($"{c.Where}: apply_b_dec_to_input true is not defined for a {arch} (SAELens refuses it too); it must be false");
            if (normalize != "none")
                throw new InvalidParametersException($"{c.Where}: normalize_activations '{normalize}' is not supported for a {arch} (none is)");
            if (reshape != "none" || headIndex is not null)
                throw new InvalidParametersException($"{c.Where}: reshape_activations / hook_head_index are not supported for a {arch}");
        }
        else if (hookOut is not null && hookOut != hook)
        {
            throw new InvalidParametersException($"{c.Where}: metadata.hook_name_out '{hookOut}' differs from the hook, which only transcoders may do (architecture '{arch}')");
        }
        bool applyBDec = c.Bool(cfg["apply_b_dec_to_input"], "apply_b_dec_to_input") ?? !transcoder;
        bool finetuning = c.Bool(cfg["finetuning_scaling_factor"], "finetuning_scaling_factor") ?? false;

        // InterpMesh ≤ 1.1 kept an unfolded scale in a private key (beside expected_average_only_in); it declares the scale.
        double? legacyScale = c.Number(cfg["interpmesh_norm_scale"], "interpmesh_norm_scale");
        if (legacyScale is not null && normalize == "none")
            normalize = "expected_average_only_in";
        else if (legacyScale is not null && normalize != "expected_average_only_in")
            throw new InvalidParametersException($"{c.Where}: interpmesh_norm_scale with normalize_activations '{normalize}' is contradictory (the scale belongs to expected_average_only_in)");
        // An expected_average_only_in scale not folded: the caller's, SAELens' activation_scaler.json, or our pre-1.2 private key.
        double? scale = null;
        if (normalize == "expected_average_only_in")
        {
            double? fromScaler = null;
            if (files.TryGetValue(ActivationScaler, out var scalerBytes))
            {
                var scaler = new ConfigReader(ParseObject(scalerBytes, $"{where}/{ActivationScaler}"), $"{where}/{ActivationScaler}");
                fromScaler = scaler.Number(scaler.Cfg["scaling_factor"], "scaling_factor");
            }
            scale = options.NormScalingFactor ?? fromScaler ?? legacyScale
                ?? throw new InvalidParametersException($"{c.Where}: normalize_activations 'expected_average_only_in' but the folder has no scale ({ActivationScaler}); give norm_scaling_factor (SAELens' pretrained_saes.yaml lists it per SAE)");
            if (!(scale > 0))
                throw new InvalidParametersException($"{c.Where}: the activation scale {scale} must be positive");
        }

        var tensors = ReadSafeTensors(weights, $"{where}/{Weights}");
        float[]? sparsity = null;
        if (files.TryGetValue(Sparsity, out var sparsityBytes))
        {
            var s = ReadSafeTensors(sparsityBytes, $"{where}/{Sparsity}");
            try
            {
                if (!s.TryGetValue("sparsity", out var t) || s.Count != 1)
                    throw new InvalidParametersException($"{where}/{Sparsity} must hold one tensor, 'sparsity' (it has {string.Join(", ", s.Keys)})");
                if (!t.shape.SequenceEqual([(long)dSae]))
                    throw new InvalidParametersException($"{where}/{Sparsity}: sparsity is [{string.Join(", ", t.shape)}], expected [{dSae}]");
                sparsity = t.to_type(ScalarType.Float32).data<float>().ToArray();
            }
            finally
            {
                foreach (var t in s.Values)
                    t.Dispose();
            }
        }
        var info = new SaeInfo(hook, model, arch, dIn, dSae, k, normalize, scale)
        {
            HookNameOut = transcoder ? hookOut : null,
            HookHeadIndex = headIndex,
            ReshapeHookZ = reshape == "hook_z",
            LogSparsity = sparsity,
            ContextSize = c.Int(c.Find("context_size"), "context_size"),
            DatasetPath = c.Text(c.Find("dataset_path"), "dataset_path"),
            PrependBos = c.Bool(c.Find("prepend_bos"), "prepend_bos") ?? true,
            Layout = v6 ? "saelens-6" : "saelens-pre-6",
        };
        return Build(tensors, info, dOut, applyBDec, finetuning, rescale, $"{where}/{Weights}", options);
    }

    private static int Major(string version, ConfigReader c)
    {
        var m = VersionPattern().Match(version);
        return m.Success && int.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int major) ? major
            : throw new InvalidParametersException($"{c.Where}: sae_lens_version '{Shorten(version)}' is not a version number");
    }

    [GeneratedRegex(@"^v?(\d+)(\.|$)")]
    private static partial Regex VersionPattern();

    [GeneratedRegex(@"(^|/)layer_(\d+)(/|$)")]
    private static partial Regex LayerFolder();

    /// <summary>
    /// Gemma Scope (the official repositories): <c>params.npz</c> with W_enc, W_dec, b_enc, b_dec,
    /// threshold (or w_… names), JumpReLU, b_dec not subtracted from the input, no normalisation;
    /// the hook comes from the caller, as SAELens derives it from the repository name.
    /// </summary>
    private static (SparseAutoencoder Sae, SaeInfo Info) ReadGemmaScope(byte[] npz, string file, string where, SaeReadOptions options)
    {
        string hook = options.Hook
            ?? throw new InvalidParametersException($"{where} is a Gemma Scope folder ({GemmaScopeParams}, no {Config}), which names no hook: give hook, e.g. blocks.12.hook_resid_post (res), blocks.12.hook_mlp_out (mlp) or blocks.12.attn.hook_z (att)");
        var layer = LayerFolder().Match(where + "/" + file);
        if (layer.Success && HookNames.Layer(hook) is int l && l.ToString(CultureInfo.InvariantCulture) != layer.Groups[2].Value)
            throw new InvalidParametersException($"{where}: the folder is layer_{layer.Groups[2].Value}, but hook '{hook}' is in block {l}");
        var raw = Npz.Read(npz, $"{where}/{file}");
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, t) in raw)
            tensors[name.StartsWith("w_", StringComparison.Ordinal) ? "W_" + name[2..] : name] = t;
        if (!tensors.TryGetValue("W_enc", out var wEnc) || wEnc.dim() != 2)
        {
            foreach (var t in tensors.Values)
                t.Dispose();
            throw new InvalidParametersException($"{where}/{file} lacks a 2-D W_enc (it has {string.Join(", ", raw.Keys)})");
        }
        int dIn = (int)wEnc.shape[0], dSae = (int)wEnc.shape[1];
        // SAELens' Gemma Scope loader: embedding SAEs were trained on embeddings scaled by √d_model.
        if (file.Contains("embedding", StringComparison.Ordinal))
        {
            using Scalar root = Math.Sqrt(dIn);
            tensors["W_enc"] = wEnc.div(root);
            wEnc.Dispose();
            if (tensors.TryGetValue("W_dec", out var wDec))
            {
                tensors["W_dec"] = wDec.mul(root);
                wDec.Dispose();
            }
        }
        var info = new SaeInfo(hook, null, "jumprelu", dIn, dSae, 0, "none", null)
        {
            ReshapeHookZ = hook.Contains("hook_z", StringComparison.Ordinal),
            Layout = "gemma-scope",
        };
        return Build(tensors, info, dIn, applyBDec: false, finetuning: false, rescale: false, $"{where}/{file}", options);
    }

    /// <summary>Checks the tensors of the architecture (refusing any other by name) and makes the SAE; disposes <paramref name="tensors"/>.</summary>
    private static (SparseAutoencoder Sae, SaeInfo Info) Build(Dictionary<string, Tensor> tensors, SaeInfo info, int dOut, bool applyBDec, bool finetuning, bool rescale, string file, SaeReadOptions options)
    {
        using var scope = NewDisposeScope();
        int dIn = info.DIn, dSae = info.DSae;
        string arch = info.Architecture;
        var expected = new Dictionary<string, long[]>(StringComparer.Ordinal)
        {
            ["W_enc"] = [dIn, dSae],
            ["W_dec"] = [dSae, dOut],
            ["b_dec"] = [dOut],
        };
        if (arch == "gated")
        {
            expected["b_gate"] = [dSae];
            expected["r_mag"] = [dSae];
            expected["b_mag"] = [dSae];
        }
        else
        {
            expected["b_enc"] = [dSae];
        }
        if (arch is "jumprelu" or "jumprelu_transcoder")
            expected["threshold"] = [dSae];
        if (arch == "skip_transcoder")
            expected["W_skip"] = [dOut, dIn];
        try
        {
            // Pre-6.0 finetuning scaling: all ones is dropped; otherwise it multiplies the features
            // before the decoder (SAELens 5.x), which is folded into W_dec's rows.
            Tensor? scaling = null;
            foreach (string name in new[] { "scaling_factor", "finetuning_scaling_factor" })
            {
                if (!tensors.Remove(name, out var sf))
                    continue;
                if (!sf.shape.SequenceEqual([(long)dSae]))
                    throw new InvalidParametersException($"{file}: {name} is [{string.Join(", ", sf.shape)}], expected [{dSae}]");
                using (sf)
                {
                    var ones = sf.to_type(ScalarType.Float32);
                    if (ones.allclose(ones_like(ones)))
                    {
                        ones.Dispose();
                        continue;
                    }
                    if (!finetuning)
                    {
                        ones.Dispose();
                        throw new InvalidParametersException($"{file}: {name} is not all ones but finetuning_scaling_factor is false (SAELens refuses this too)");
                    }
                    scaling = ones;
                }
            }
            var unknown = tensors.Keys.Where(n => !expected.ContainsKey(n)).ToList();
            if (unknown.Count > 0)
                throw new InvalidParametersException($"{file} holds {string.Join(", ", unknown)}, which a '{arch}' SAE does not have (it has {string.Join(", ", expected.Keys)})");
            Tensor Need(string name)
            {
                var shape = expected[name];
                if (!tensors.TryGetValue(name, out var t))
                    throw new InvalidParametersException($"{file} lacks {name} (a '{arch}' SAE has {string.Join(", ", expected.Keys)})");
                if (!t.shape.SequenceEqual(shape))
                    throw new InvalidParametersException($"{file}: {name} is [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}] from d_in = {dIn}, d_sae = {dSae}{(dOut != dIn ? $", d_out = {dOut}" : "")}");
                return t.to_type(ScalarType.Float32).contiguous().clone();
            }
            var wEnc = Need("W_enc");
            var wDec = Need("W_dec");
            if (scaling is not null)
            {
                using (scaling)
                    wDec.mul_(scaling.unsqueeze(1));
            }
            var extras = new SaeExtras
            {
                Threshold = expected.ContainsKey("threshold") ? Need("threshold") : null,
                RMag = arch == "gated" ? Need("r_mag") : null,
                BMag = arch == "gated" ? Need("b_mag") : null,
                WSkip = arch == "skip_transcoder" ? Need("W_skip") : null,
                RuntimeNormalization = info.NormalizeActivations is "constant_norm_rescale" or "layer_norm" ? info.NormalizeActivations : "none",
                RescaleActsByDecoderNorm = rescale,
            };
            var sae = new SparseAutoencoder(arch, dIn, dSae, info.K, wEnc, Need(arch == "gated" ? "b_gate" : "b_enc"), wDec, Need("b_dec"), applyBDec, extras);
            if (info.NormScale is double s && options.FoldScale)
            {
                sae.FoldInputScale(s);
                info = info with { NormScale = null, FoldedScale = s };
            }
            return (sae, info);
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    private static string Shorten(string s) => s.Length <= 60 ? s : string.Concat(s.AsSpan(0, 57), "...");

    private static Dictionary<string, Tensor> ReadSafeTensors(byte[] bytes, string where)
    {
        try
        {
            return SafeTensors.Read(bytes, where);
        }
        catch (InterpMesh.Contracts.Tensors.SafeTensorsFormatException e)
        {
            throw new InvalidParametersException($"{where} is not a valid safetensors file: {e.Problem}");
        }
    }

    /// <summary>
    /// The SAELens folder of an SAE. An unfolded expected_average_only_in scale is folded into the
    /// weights (W_enc·s, W_dec/s, b_dec/s) and <c>normalize_activations: none</c> written, as
    /// SAELens does when training ends; a <paramref name="checkpoint"/> keeps it unfolded and writes
    /// it to <c>activation_scaler.json</c>, as SAELens' checkpoints do, so training can go on.
    /// </summary>
    public static Dictionary<string, byte[]> Write(SparseAutoencoder sae, SaeInfo info, SaeLensLayout layout = SaeLensLayout.V6, bool checkpoint = false)
    {
        if (layout == SaeLensLayout.V5 && sae.IsTranscoder)
            throw new InvalidParametersException($"SAELens 5.x has no {sae.Architecture}; write the 6.x layout");
        if (layout == SaeLensLayout.V5 && sae.RescaleActsByDecoderNorm)
            throw new InvalidParametersException("SAELens 5.x has no rescale_acts_by_decoder_norm; write the 6.x layout");
        using var scope = NewDisposeScope();
        Tensor wEnc = sae.WEnc, wDec = sae.WDec, bDec = sae.BDec;
        string normalize = info.NormalizeActivations;
        double? scaler = null;
        if (info.NormScale is double s)
        {
            if (checkpoint)
            {
                scaler = s;
            }
            else
            {
                using Scalar factor = s;
                wEnc = sae.WEnc.mul(factor);
                wDec = sae.WDec.div(factor);
                bDec = sae.BDec.div(factor);
                normalize = "none";
            }
        }
        var cfg = layout == SaeLensLayout.V6 ? V6Config(sae, info, normalize) : V5Config(sae, info, normalize);
        var state = new Dictionary<string, Tensor> { ["W_enc"] = wEnc, ["W_dec"] = wDec, ["b_dec"] = bDec };
        state[sae.Architecture == "gated" ? "b_gate" : "b_enc"] = sae.BEnc;
        if (sae.Threshold is { } th)
            state["threshold"] = th;
        if (sae.RMag is { } rMag)
            state["r_mag"] = rMag;
        if (sae.BMag is { } bMag)
            state["b_mag"] = bMag;
        if (sae.WSkip is { } wSkip)
            state["W_skip"] = wSkip;
        var files = new Dictionary<string, byte[]> { [Config] = Encoding.UTF8.GetBytes(cfg.ToJsonString()) };
        using (no_grad())
            files[Weights] = SafeTensors.ToBytes(state);
        if (info.LogSparsity is { } sparsity)
        {
            var t = tensor(sparsity);
            files[Sparsity] = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["sparsity"] = t });
        }
        if (scaler is double sc)
            files[ActivationScaler] = Encoding.UTF8.GetBytes(new JsonObject { ["scaling_factor"] = sc }.ToJsonString());
        return files;
    }

    /// <summary>SAELens 6.x (<c>SAEConfig.to_dict</c>, sae.py; metadata as <c>LLMSaeTrainingRunner._set_sae_metadata</c> sets it).</summary>
    private static JsonObject V6Config(SparseAutoencoder sae, SaeInfo info, string normalize)
    {
        var metadata = new JsonObject
        {
            ["sae_lens_version"] = SaeLensVersion,
            ["sae_lens_training_version"] = null,
            ["dataset_path"] = info.DatasetPath,
            ["hook_name"] = info.HookName,
            ["model_name"] = info.ModelName,
            ["model_class_name"] = "HookedTransformer",
            ["hook_head_index"] = info.HookHeadIndex,
            ["context_size"] = info.ContextSize,
            ["seqpos_slice"] = new JsonArray((JsonNode?)null),
            ["model_from_pretrained_kwargs"] = new JsonObject(),
            ["prepend_bos"] = info.PrependBos,
            ["exclude_special_tokens"] = false,
            ["sequence_separator_token"] = null,
            ["disable_concat_sequences"] = false,
            ["trained_with"] = "InterpMesh sae plugin",
        };
        if (info.HookNameOut is { } hookOut)
        {
            metadata["hook_name_out"] = hookOut;
            metadata["hook_head_index_out"] = null;
        }
        var cfg = new JsonObject
        {
            ["d_in"] = sae.DIn,
            ["d_sae"] = sae.DSae,
            ["dtype"] = "float32",
            ["device"] = "cpu",
            ["apply_b_dec_to_input"] = sae.ApplyBDecToInput,
            ["normalize_activations"] = normalize,
            ["reshape_activations"] = info.ReshapeHookZ ? "hook_z" : "none",
            ["metadata"] = metadata,
            ["architecture"] = sae.Architecture,
        };
        if (sae.Architecture == "topk")
        {
            cfg["k"] = sae.K;
            cfg["rescale_acts_by_decoder_norm"] = sae.RescaleActsByDecoderNorm;
        }
        if (sae.IsTranscoder)
            cfg["d_out"] = sae.DOut;
        return cfg;
    }

    /// <summary>SAELens 5.x (<c>SAEConfig.to_dict</c>, v5.11.0 sae.py: every field its constructor requires).</summary>
    private static JsonObject V5Config(SparseAutoencoder sae, SaeInfo info, string normalize) => new()
    {
        ["architecture"] = sae.Architecture,
        ["d_in"] = sae.DIn,
        ["d_sae"] = sae.DSae,
        ["dtype"] = "float32",
        ["device"] = "cpu",
        ["model_name"] = info.ModelName,
        ["hook_name"] = info.HookName,
        ["hook_layer"] = HookNames.Layer(info.HookName) ?? 0,
        ["hook_head_index"] = info.HookHeadIndex,
        ["activation_fn_str"] = sae.Architecture == "topk" ? "topk" : "relu",
        ["activation_fn_kwargs"] = sae.Architecture == "topk" ? new JsonObject { ["k"] = sae.K } : new JsonObject(),
        ["apply_b_dec_to_input"] = sae.ApplyBDecToInput,
        ["finetuning_scaling_factor"] = false,
        ["sae_lens_training_version"] = null,
        ["prepend_bos"] = info.PrependBos,
        ["dataset_path"] = info.DatasetPath ?? "",
        ["dataset_trust_remote_code"] = false,
        ["context_size"] = info.ContextSize ?? 0,
        ["normalize_activations"] = normalize,
        ["neuronpedia_id"] = null,
        ["model_from_pretrained_kwargs"] = new JsonObject(),
        ["seqpos_slice"] = new JsonArray((JsonNode?)null),
    };
}
