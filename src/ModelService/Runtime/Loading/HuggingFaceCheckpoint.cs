using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>
/// Loads a Hugging Face checkpoint folder: <c>config.json</c> plus <c>model.safetensors</c> or a
/// sharded <c>model.safetensors.index.json</c>. Supports <c>GPT2LMHeadModel</c>,
/// <c>LlamaForCausalLM</c>, <c>MistralForCausalLM</c> and <c>Qwen2ForCausalLM</c> (q/k/v biases),
/// tied or separate unembedding, grouped-query attention; F32, F16 and BF16 weights.
/// </summary>
public static class HuggingFaceCheckpoint
{
    public static readonly string[] SupportedArchitectures = ["GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

    public static bool IsCheckpointFolder(string path) => Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, "config.json"));

    /// <summary>Loads the weights tensor by tensor, each converted once to <paramref name="dtype"/> on <paramref name="device"/> (the CPU by default).</summary>
    public static (ModelConfig Config, TransformerWeights Weights) Load(string folder, ScalarType dtype, Device? device = null)
    {
        string configPath = System.IO.Path.Combine(folder, "config.json");
        var config = ReadConfig(configPath);
        using var weights = WeightFiles.Open(folder, device ?? CPU);
        var tensors = config.Mlp == MlpKind.GeluTanh ? LoadGpt2(config, weights, dtype) : LoadLlama(config, weights, dtype);
        try
        {
            tensors.Validate(config, folder);
        }
        catch
        {
            tensors.Dispose();
            throw;
        }
        return (config, tensors);
    }

    /// <summary>Reads and normalises <c>config.json</c>; unknown architectures are refused by name.</summary>
    public static ModelConfig ReadConfig(string path)
    {
        JsonElement root;
        try
        {
            var bytes = File.ReadAllBytes(path);
            // JsonDocument checks UTF-8 only when a string is read (and then throws InvalidOperationException).
            if (!System.Text.Unicode.Utf8.IsValid(bytes))
                throw new ModelFormatException(path, "the model config is not valid UTF-8 text; it must be a UTF-8 JSON file");
            using var doc = JsonDocument.Parse(bytes);
            root = doc.RootElement.Clone();
        }
        catch (Exception e) when (e is JsonException or IOException)
        {
            throw new ModelFormatException(path, $"cannot read the model config ({e.Message})", e);
        }
        if (root.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException(path, "the model config must be a JSON object");

        string? arch = root.TryGetProperty("architectures", out var a) && a.ValueKind == JsonValueKind.Array && a.GetArrayLength() > 0
            && a[0].ValueKind == JsonValueKind.String ? a[0].GetString() : null;
        if (arch is null)
            throw new ModelFormatException(path, $"no \"architectures\" entry; supported: {string.Join(", ", SupportedArchitectures)}");

        int Int(string name, int? fallback = null)
        {
            if (root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i))
                return i;
            if (root.TryGetProperty(name, out v) && v.ValueKind != JsonValueKind.Null)
                throw new ModelFormatException(path, $"\"{name}\" must be an integer, got {v.GetRawText()}");
            return fallback ?? throw new ModelFormatException(path, $"missing \"{name}\" (needed for {arch})");
        }
        double Real(string name, double fallback) =>
            root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : fallback;
        bool Flag(string name, bool fallback) =>
            root.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : fallback;
        string? Text(string name) =>
            root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
        int? TokenId(string name) =>
            root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;

        ModelConfig config;
        switch (arch)
        {
            case "GPT2LMHeadModel":
                {
                    string act = Text("activation_function") ?? "gelu_new";
                    if (act is not ("gelu_new" or "gelu_pytorch_tanh" or "gelu_fast"))
                        throw new ModelFormatException(path, $"activation_function '{act}' is not supported for GPT-2 (supported: gelu_new, gelu_pytorch_tanh)");
                    int d = Int("n_embd"), heads = Int("n_head");
                    if (heads <= 0 || d % heads != 0)
                        throw new ModelFormatException(path, $"n_embd ({d}) must be a multiple of n_head ({heads})");
                    config = new ModelConfig
                    {
                        Architecture = arch,
                        NLayers = Int("n_layer"),
                        DModel = d,
                        NHeads = heads,
                        NKvHeads = heads,
                        DHead = d / heads,
                        // n_inner may be null (= 4 * n_embd); Int refuses non-integers by name.
                        DMlp = Int("n_inner", d is > 0 and <= int.MaxValue / 4 ? 4 * d : 0),
                        VocabSize = Int("vocab_size"),
                        ContextLength = Int("n_positions", root.TryGetProperty("n_ctx", out var ctx) && ctx.ValueKind != JsonValueKind.Null ? Int("n_ctx") : null),
                        Norm = NormKind.LayerNorm,
                        NormEps = Real("layer_norm_epsilon", 1e-5),
                        Positional = PositionalKind.Learned,
                        Mlp = MlpKind.GeluTanh,
                        TiedEmbeddings = Flag("tie_word_embeddings", true),
                        BosTokenId = TokenId("bos_token_id"),
                        EosTokenId = TokenId("eos_token_id"),
                    };
                    break;
                }
            case "LlamaForCausalLM" or "MistralForCausalLM" or "Qwen2ForCausalLM":
                {
                    string act = Text("hidden_act") ?? "silu";
                    if (act != "silu")
                        throw new ModelFormatException(path, $"hidden_act '{act}' is not supported (supported: silu)");
                    if (root.TryGetProperty("rope_scaling", out var scaling) && scaling.ValueKind == JsonValueKind.Object)
                    {
                        string kind = (scaling.TryGetProperty("rope_type", out var rt) || scaling.TryGetProperty("type", out rt)) && rt.ValueKind == JsonValueKind.String
                            ? rt.GetString()! : "";
                        if (kind != "default")
                            throw new ModelFormatException(path, $"rope_scaling '{kind}' is not supported yet; only unscaled RoPE (rope_theta) is");
                    }
                    int d = Int("hidden_size"), heads = Int("num_attention_heads");
                    if (heads <= 0)
                        throw new ModelFormatException(path, "num_attention_heads must be positive");
                    int headDim = Int("head_dim", d / heads);
                    config = new ModelConfig
                    {
                        Architecture = arch,
                        NLayers = Int("num_hidden_layers"),
                        DModel = d,
                        NHeads = heads,
                        NKvHeads = Int("num_key_value_heads", heads),
                        DHead = headDim,
                        DMlp = Int("intermediate_size"),
                        VocabSize = Int("vocab_size"),
                        ContextLength = Int("max_position_embeddings", 2048),
                        Norm = NormKind.RmsNorm,
                        NormEps = Real("rms_norm_eps", 1e-6),
                        Positional = PositionalKind.Rotary,
                        RopeTheta = Real("rope_theta", 10000.0),
                        RotaryDim = headDim,
                        Mlp = MlpKind.SwiGlu,
                        TiedEmbeddings = Flag("tie_word_embeddings", false),
                        BosTokenId = TokenId("bos_token_id"),
                        EosTokenId = TokenId("eos_token_id"),
                    };
                    break;
                }
            default:
                throw new ModelFormatException(path, $"unknown architecture '{arch}'; supported: {string.Join(", ", SupportedArchitectures)}");
        }
        config.Validate(path);
        return config;
    }

    private static TransformerWeights LoadGpt2(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        string p = files.Has("transformer.wte.weight") ? "transformer." : "";
        // GPT-2 stores Conv1D weights as [in, out]; the runtime uses [out, in].
        Tensor Conv(string name) => files.ReadTransposed(p + name, dtype);
        Tensor W(string name) => files.Read(p + name, dtype);

        var embed = W("wte.weight");
        var blocks = new List<BlockWeights>();
        for (int l = 0; l < c.NLayers; l++)
        {
            string h = $"h.{l}.";
            blocks.Add(new BlockWeights
            {
                Ln1Weight = W(h + "ln_1.weight"),
                Ln1Bias = W(h + "ln_1.bias"),
                Qkv = Conv(h + "attn.c_attn.weight"),
                QkvBias = W(h + "attn.c_attn.bias"),
                Out = Conv(h + "attn.c_proj.weight"),
                OutBias = W(h + "attn.c_proj.bias"),
                Ln2Weight = W(h + "ln_2.weight"),
                Ln2Bias = W(h + "ln_2.bias"),
                MlpIn = Conv(h + "mlp.c_fc.weight"),
                MlpInBias = W(h + "mlp.c_fc.bias"),
                MlpOut = Conv(h + "mlp.c_proj.weight"),
                MlpOutBias = W(h + "mlp.c_proj.bias"),
            });
        }
        var unembed = !c.TiedEmbeddings && files.Has("lm_head.weight") ? files.Read("lm_head.weight", dtype) : embed;
        return new TransformerWeights
        {
            Embed = embed,
            PosEmbed = W("wpe.weight"),
            Blocks = blocks,
            LnFinalWeight = W("ln_f.weight"),
            LnFinalBias = W("ln_f.bias"),
            Unembed = unembed,
        };
    }

    private static TransformerWeights LoadLlama(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        Tensor W(string name) => files.Read(name, dtype);
        Tensor? Optional(string name) => files.Has(name) ? files.Read(name, dtype) : null;
        Tensor Fuse(params Tensor[] parts)
        {
            if (parts.Any(t => t.dim() != parts[0].dim() || !t.shape.Skip(1).SequenceEqual(parts[0].shape.Skip(1))))
            {
                string shapes = string.Join("; ", parts.Select(t => $"[{string.Join(", ", t.shape)}]"));
                foreach (var t in parts)
                    t.Dispose();
                throw new ModelFormatException(files.Folder, $"projections that must share their input size have shapes {shapes}; expected [*, {c.DModel}] from the config");
            }
            var fused = cat(parts, 0);
            foreach (var t in parts)
                t.Dispose();
            return fused;
        }

        var embed = W("model.embed_tokens.weight");
        var blocks = new List<BlockWeights>();
        for (int l = 0; l < c.NLayers; l++)
        {
            string h = $"model.layers.{l}.";
            var qb = Optional(h + "self_attn.q_proj.bias");
            var kb = Optional(h + "self_attn.k_proj.bias");
            var vb = Optional(h + "self_attn.v_proj.bias");
            Tensor? qkvBias = null;
            if (qb is not null || kb is not null || vb is not null)
            {
                qb ??= zeros((long)c.NHeads * c.DHead, dtype: dtype, device: files.Device);
                kb ??= zeros((long)c.NKvHeads * c.DHead, dtype: dtype, device: files.Device);
                vb ??= zeros((long)c.NKvHeads * c.DHead, dtype: dtype, device: files.Device);
                qkvBias = Fuse(qb, kb, vb);
            }
            blocks.Add(new BlockWeights
            {
                Ln1Weight = W(h + "input_layernorm.weight"),
                Qkv = files.ReadConcat(dtype, h + "self_attn.q_proj.weight", h + "self_attn.k_proj.weight", h + "self_attn.v_proj.weight"),
                QkvBias = qkvBias,
                Out = W(h + "self_attn.o_proj.weight"),
                OutBias = Optional(h + "self_attn.o_proj.bias"),
                Ln2Weight = W(h + "post_attention_layernorm.weight"),
                MlpIn = files.ReadConcat(dtype, h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"),
                MlpOut = W(h + "mlp.down_proj.weight"),
            });
        }
        Tensor unembed = embed;
        if (!c.TiedEmbeddings)
        {
            unembed = files.Has("lm_head.weight") ? W("lm_head.weight")
                : throw new ModelFormatException(files.Folder, "missing tensor 'lm_head.weight' (tie_word_embeddings is false)");
        }
        return new TransformerWeights
        {
            Embed = embed,
            Blocks = blocks,
            LnFinalWeight = W("model.norm.weight"),
            Unembed = unembed,
        };
    }

    /// <summary>The safetensors file(s) of a checkpoint, single or sharded, by tensor name.</summary>
    private sealed class WeightFiles : IDisposable
    {
        private readonly Dictionary<string, SafeTensorsFile> byTensor;
        private readonly List<SafeTensorsFile> files;

        private WeightFiles(string folder, Device device, List<SafeTensorsFile> files, Dictionary<string, SafeTensorsFile> byTensor)
        {
            Folder = folder;
            Device = device;
            this.files = files;
            this.byTensor = byTensor;
        }

        public string Folder { get; }

        /// <summary>Where the tensors are created.</summary>
        public Device Device { get; }

        public static WeightFiles Open(string folder, Device device)
        {
            string single = System.IO.Path.Combine(folder, "model.safetensors");
            string index = System.IO.Path.Combine(folder, "model.safetensors.index.json");
            var files = new List<SafeTensorsFile>();
            var byTensor = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
            try
            {
                if (File.Exists(single))
                {
                    var f = SafeTensorsFile.Open(single);
                    files.Add(f);
                    foreach (var name in f.Entries.Keys)
                        byTensor[name] = f;
                }
                else if (File.Exists(index))
                {
                    foreach (var (name, shard) in ReadIndex(index))
                    {
                        var f = files.FirstOrDefault(x => x.Path == shard);
                        if (f is null)
                        {
                            if (!File.Exists(shard))
                                throw new ModelFormatException(index, $"shard '{System.IO.Path.GetFileName(shard)}' named in weight_map does not exist");
                            f = SafeTensorsFile.Open(shard);
                            files.Add(f);
                        }
                        if (!f.Entries.ContainsKey(name))
                            throw new ModelFormatException(shard, $"missing tensor '{name}' (the index says it is in this shard)");
                        byTensor[name] = f;
                    }
                }
                else
                {
                    throw new ModelFormatException(folder, "no weights: expected model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not read; convert them to safetensors)");
                }
            }
            catch
            {
                foreach (var f in files)
                    f.Dispose();
                throw;
            }
            return new WeightFiles(folder, device, files, byTensor);
        }

        private static IEnumerable<(string Name, string Shard)> ReadIndex(string index)
        {
            JsonDocument doc;
            try
            {
                var bytes = File.ReadAllBytes(index);
                if (!System.Text.Unicode.Utf8.IsValid(bytes))
                    throw new ModelFormatException(index, "not valid UTF-8 text; the index must be a UTF-8 JSON file");
                doc = JsonDocument.Parse(bytes);
            }
            catch (JsonException e)
            {
                throw new ModelFormatException(index, $"not valid JSON ({e.Message})", e);
            }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                    throw new ModelFormatException(index, "missing \"weight_map\" object");
                string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(index))!;
                var result = new List<(string, string)>();
                foreach (var e in map.EnumerateObject())
                {
                    string? file = e.Value.ValueKind == JsonValueKind.String ? e.Value.GetString() : null;
                    if (string.IsNullOrEmpty(file) || file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                        throw new ModelFormatException(index, $"weight_map entry for '{e.Name}' must be a file name in the same folder, got '{file}'");
                    result.Add((e.Name, System.IO.Path.Combine(dir, file)));
                }
                return result;
            }
        }

        public bool Has(string name) => byTensor.ContainsKey(name);

        public Tensor Read(string name, ScalarType dtype) => FileOf(name).Read(name, dtype, Device);

        /// <summary>A stored <c>[in, out]</c> matrix as <c>[out, in]</c>, transposed while it is read.</summary>
        public Tensor ReadTransposed(string name, ScalarType dtype) => FileOf(name).ReadTransposed(name, dtype, Device);

        /// <summary>
        /// Tensors concatenated along their first dimension (fused q/k/v, gate/up): the result is
        /// allocated once and each part is read straight into its rows, so no part is ever held twice.
        /// </summary>
        public Tensor ReadConcat(ScalarType dtype, params string[] names)
        {
            var entries = names.Select(n => FileOf(n).Entry(n)).ToArray();
            var first = entries[0].Shape;
            if (entries.Any(e => e.Shape.Length != first.Length || first.Length == 0 || !e.Shape.Skip(1).SequenceEqual(first.Skip(1))))
            {
                string shapes = string.Join("; ", entries.Select(e => $"[{string.Join(", ", e.Shape)}]"));
                throw new ModelFormatException(Folder, $"projections that must share their input size have shapes {shapes}");
            }
            var fused = empty([entries.Sum(e => e.Shape[0]), .. first.Skip(1)], dtype, device: Device);
            try
            {
                long row = 0;
                foreach (var e in entries)
                {
                    using var rows = fused.narrow(0, row, e.Shape[0]);
                    FileOf(e.Name).ReadInto(e.Name, rows);
                    row += e.Shape[0];
                }
            }
            catch
            {
                fused.Dispose();
                throw;
            }
            return fused;
        }

        private SafeTensorsFile FileOf(string name) => byTensor.TryGetValue(name, out var f) ? f
            : throw new ModelFormatException(files.Count == 1 ? files[0].Path : Folder, $"missing tensor '{name}'");

        public void Dispose()
        {
            foreach (var f in files)
                f.Dispose();
        }
    }
}
