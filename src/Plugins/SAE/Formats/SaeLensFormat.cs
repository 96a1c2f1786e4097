using System.Text;
using System.Text.Json.Nodes;
using InterpMesh.Plugins.SAE.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.SAE.Formats;

/// <summary>What an SAE folder says about where it belongs.</summary>
internal sealed record SaeInfo(string HookName, string? ModelName, string Architecture, int DIn, int DSae, int K, string NormalizeActivations, double? NormScale);

/// <summary>
/// The SAELens on-disk layout: <c>cfg.json</c> + <c>sae_weights.safetensors</c> with W_enc [d_in,
/// d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]. Reads the current config (6.x:
/// <c>architecture</c>, <c>k</c>, <c>metadata.hook_name</c>) and the older flat one
/// (<c>hook_point</c> or <c>hook_name</c> at the top, <c>activation_fn_str</c> /
/// <c>activation_fn_kwargs.k</c> for TopK); writes the current one.
/// </summary>
internal static class SaeLensFormat
{
    public const string Config = "cfg.json";
    public const string Weights = "sae_weights.safetensors";

    public static (SparseAutoencoder Sae, SaeInfo Info) Read(IReadOnlyDictionary<string, byte[]> files, string where)
    {
        if (!files.TryGetValue(Config, out var cfgBytes) || !files.TryGetValue(Weights, out var weights))
            throw new InvalidParametersException($"{where} is not an SAELens folder: it needs {Config} and {Weights} (it has {string.Join(", ", files.Keys)})");
        // JsonNode checks UTF-8 only when a string is read (InvalidOperationException then).
        if (!System.Text.Unicode.Utf8.IsValid(cfgBytes))
            throw new InvalidParametersException($"{where}/{Config} is not valid UTF-8 text; it must be a UTF-8 JSON object");
        JsonObject cfg;
        try
        {
            // Duplicate keys are refused while parsing; JsonObject would otherwise throw
            // ArgumentException on first access.
            cfg = JsonNode.Parse(cfgBytes, documentOptions: new System.Text.Json.JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject
                ?? throw new InvalidOperationException("the top level is not an object");
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException)
        {
            throw new InvalidParametersException($"{where}/{Config} is not a JSON object: {e.Message}");
        }
        // Typed reads that name the field: GetValue<T> on a value of another JSON type would throw
        // InvalidOperationException or FormatException, which a job reports as an internal error.
        InvalidParametersException Wrong(string field, JsonNode node, string expected) =>
            new($"{where}/{Config}: {field} must be {expected}, got {Shorten(node.ToJsonString())}");
        string? Text(JsonNode? node, string field) =>
            node is null ? null : node.GetValueKind() == System.Text.Json.JsonValueKind.String ? node.GetValue<string>() : throw Wrong(field, node, "a string");
        int? Int(JsonNode? node, string field) =>
            node is null ? null : node is JsonValue v && v.TryGetValue(out int i) ? i : throw Wrong(field, node, "an integer (32-bit)");
        var meta = cfg["metadata"] as JsonObject;
        string hook = Text(meta?["hook_name"] ?? cfg["hook_name"] ?? cfg["hook_point"], "hook_name")
            ?? throw new InvalidParametersException($"{where}/{Config} names no hook (metadata.hook_name, hook_name or hook_point)");
        string? model = Text(meta?["model_name"] ?? cfg["model_name"], "model_name");
        int dIn = Int(cfg["d_in"], "d_in") ?? throw new InvalidParametersException($"{where}/{Config} has no d_in");
        int dSae = Int(cfg["d_sae"], "d_sae") ?? throw new InvalidParametersException($"{where}/{Config} has no d_sae");
        if (dIn <= 0 || dSae <= 0)
            throw new InvalidParametersException($"{where}/{Config}: d_in ({dIn}) and d_sae ({dSae}) must be positive");
        string arch = Text(cfg["architecture"], "architecture") ?? "standard";
        string? activation = Text(cfg["activation_fn_str"], "activation_fn_str");
        if (activation == "topk")
            arch = "topk";
        var kwargs = cfg["activation_fn_kwargs"];
        int k = Int(cfg["k"], "k") ?? Int(kwargs is JsonObject kw ? kw["k"] : null, "activation_fn_kwargs.k") ?? 0;
        string normalize = Text(cfg["normalize_activations"], "normalize_activations") ?? "none";
        double? scale = cfg["interpmesh_norm_scale"] is { } s
            ? s is JsonValue sv && sv.TryGetValue(out double d) && double.IsFinite(d) ? d : throw Wrong("interpmesh_norm_scale", s, "a finite number")
            : null;
        bool applyBDec = cfg["apply_b_dec_to_input"] is { } flag
            ? flag.GetValueKind() is System.Text.Json.JsonValueKind.True or System.Text.Json.JsonValueKind.False ? flag.GetValue<bool>() : throw Wrong("apply_b_dec_to_input", flag, "true or false")
            : true;
        if (arch is not ("standard" or "topk"))
            throw new InvalidParametersException($"{where}: architecture '{arch}' is not supported yet (standard and topk are)");

        var tensors = ReadWeights(weights, where);
        try
        {
            Tensor Need(string name, long[] shape)
            {
                if (!tensors.TryGetValue(name, out var t))
                    throw new InvalidParametersException($"{where}/{Weights} lacks {name}");
                if (!t.shape.SequenceEqual(shape))
                    throw new InvalidParametersException($"{where}/{Weights}: {name} is [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}] from d_in = {dIn}, d_sae = {dSae}");
                return t.to_type(ScalarType.Float32);
            }
            var sae = new SparseAutoencoder(arch, dIn, dSae, k, Need("W_enc", [dIn, dSae]), Need("b_enc", [dSae]), Need("W_dec", [dSae, dIn]), Need("b_dec", [dIn]), applyBDec);
            return (sae, new SaeInfo(hook, model, arch, dIn, dSae, k, normalize, scale));
        }
        finally
        {
            foreach (var t in tensors.Values)
                t.Dispose();
        }
    }

    private static string Shorten(string s) => s.Length <= 60 ? s : string.Concat(s.AsSpan(0, 57), "...");

    private static Dictionary<string, Tensor> ReadWeights(byte[] weights, string where)
    {
        try
        {
            return SafeTensors.Read(weights, $"{where}/{Weights}");
        }
        catch (InterpMesh.Contracts.Tensors.SafeTensorsFormatException e)
        {
            throw new InvalidParametersException($"{where}/{Weights} is not a valid safetensors file: {e.Problem}");
        }
    }

    public static Dictionary<string, byte[]> Write(SparseAutoencoder sae, SaeInfo info)
    {
        var cfg = new JsonObject
        {
            ["architecture"] = sae.Architecture,
            ["d_in"] = sae.DIn,
            ["d_sae"] = sae.DSae,
            ["dtype"] = "float32",
            ["device"] = "cpu",
            ["apply_b_dec_to_input"] = sae.ApplyBDecToInput,
            ["normalize_activations"] = info.NormalizeActivations,
            ["metadata"] = new JsonObject
            {
                ["hook_name"] = info.HookName,
                ["model_name"] = info.ModelName,
                ["prepend_bos"] = true,
                ["sae_lens_training_version"] = null,
            },
        };
        if (sae.Architecture == "topk")
            cfg["k"] = sae.K;
        if (info.NormScale is double s)
            cfg["interpmesh_norm_scale"] = s;
        byte[] weights;
        using (no_grad())
        {
            weights = SafeTensors.ToBytes(new Dictionary<string, Tensor>
            {
                ["W_enc"] = sae.WEnc, ["b_enc"] = sae.BEnc, ["W_dec"] = sae.WDec, ["b_dec"] = sae.BDec,
            });
        }
        return new Dictionary<string, byte[]> { [Config] = Encoding.UTF8.GetBytes(cfg.ToJsonString()), [Weights] = weights };
    }
}
