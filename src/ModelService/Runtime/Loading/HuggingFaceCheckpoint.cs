using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>
/// Loads a Hugging Face checkpoint folder: <c>config.json</c> plus <c>model.safetensors</c> or a
/// sharded <c>model.safetensors.index.json</c>. Supports the architectures in
/// <see cref="SupportedArchitectures"/>, in both the transformers v4 config layout
/// (<c>rope_theta</c>/<c>rope_scaling</c>, <c>torch_dtype</c>) and the v5 one
/// (<c>rope_parameters</c>, <c>dtype</c>); F32, F16 and BF16 weights. Every config key that changes
/// the computation is either honoured or refused with a message naming the key and its value.
/// </summary>
public static class HuggingFaceCheckpoint
{
    public static readonly string[] SupportedArchitectures =
    [
        "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTJForCausalLM", "GPTNeoXForCausalLM",
        "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM", "Olmo2ForCausalLM",
        "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    ];

    public static bool IsCheckpointFolder(string path) => Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, "config.json"));

    /// <summary>Loads the weights tensor by tensor, each converted once to <paramref name="dtype"/> on <paramref name="device"/> (the CPU by default).</summary>
    public static (ModelConfig Config, TransformerWeights Weights) Load(string folder, ScalarType dtype, Device? device = null)
    {
        string configPath = System.IO.Path.Combine(folder, "config.json");
        var config = ReadConfig(configPath);
        using var weights = WeightFiles.Open(folder, device ?? CPU);
        var tensors = TransformerWeights.FromCheckpointLayout(config.Architecture switch
        {
            "GPT2LMHeadModel" => LoadGpt2(config, weights, dtype),
            "GPTNeoForCausalLM" => LoadGptNeo(config, weights, dtype),
            "GPTJForCausalLM" => LoadGptJ(config, weights, dtype),
            "GPTNeoXForCausalLM" => LoadGptNeoX(config, weights, dtype),
            _ => LoadLlama(config, weights, dtype),
        });
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

    /// <summary>Reads and normalises <c>config.json</c>; unknown architectures and unsupported values are refused by name.</summary>
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
        if (!SupportedArchitectures.Contains(arch))
            throw new ModelFormatException(path, $"unknown architecture '{ConfigReader.Quote(arch)}'; supported: {string.Join(", ", SupportedArchitectures)}");
        var r = new ConfigReader(path, root, arch);
        var config = arch switch
        {
            "GPT2LMHeadModel" => Gpt2Config(r),
            "GPTNeoForCausalLM" => GptNeoConfig(r),
            "GPTJForCausalLM" => GptJConfig(r),
            "GPTNeoXForCausalLM" => GptNeoXConfig(r),
            _ => LlamaFamilyConfig(r),
        };
        if (root.TryGetProperty("model_type", out var mt) && mt.ValueKind == JsonValueKind.String)
            config = config with { ModelType = ConfigReader.Quote(mt.GetString()!) };
        config.Validate(path);
        return config;
    }

    private static ModelConfig Gpt2Config(ConfigReader r)
    {
        r.RefuseUnless("add_cross_attention", false, "cross-attention needs an encoder; only decoder-only GPT-2 runs here");
        int d = r.Int("n_embd"), heads = r.Int("n_head");
        if (heads <= 0 || d % heads != 0)
            throw r.Error($"n_embd ({d}) must be a multiple of n_head ({heads})");
        bool scaled = r.Flag("scale_attn_weights", true);
        return new ModelConfig
        {
            Architecture = r.Arch,
            NLayers = r.Int("n_layer"),
            DModel = d,
            NHeads = heads,
            NKvHeads = heads,
            DHead = d / heads,
            // n_inner may be null (= 4 * n_embd); Int refuses non-integers by name.
            DMlp = r.Int("n_inner", d is > 0 and <= int.MaxValue / 4 ? 4 * d : 0),
            VocabSize = r.Int("vocab_size"),
            ContextLength = r.Int("n_positions", r.Has("n_ctx") ? r.Int("n_ctx") : null),
            Norm = NormKind.LayerNorm,
            NormEps = r.Real("layer_norm_epsilon", 1e-5),
            Positional = PositionalKind.Learned,
            Mlp = r.GeluActivation("activation_function", "gelu_new"),
            AttentionScale = scaled ? null : 1.0,
            ScaleByInverseLayer = r.Flag("scale_attn_by_inverse_layer_idx", false),
            TiedEmbeddings = r.Flag("tie_word_embeddings", true),
            BosTokenId = r.TokenId("bos_token_id"),
            EosTokenIds = r.EosIds(),
        };
    }

    /// <summary>More layers than any real model; checked before per-layer lists are built from a config.</summary>
    private const int MaxLayers = 10_000;

    private static ModelConfig GptNeoConfig(ConfigReader r)
    {
        int d = r.Int("hidden_size"), heads = r.Int("num_heads"), layers = r.Layers("num_layers");
        if (heads <= 0 || d % heads != 0)
            throw r.Error($"hidden_size ({d}) must be a multiple of num_heads ({heads})");
        // attention_types [[["global", "local"], n], ...] expands to one entry per layer (attention_layers).
        var kinds = new List<string>();
        if (r.Root.TryGetProperty("attention_types", out var types) && types.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in types.EnumerateArray())
            {
                int repeat = -1;
                if (item.ValueKind != JsonValueKind.Array || item.GetArrayLength() != 2 || item[0].ValueKind != JsonValueKind.Array
                    || item[1].ValueKind != JsonValueKind.Number || !item[1].TryGetInt32(out repeat) || repeat < 0 || (long)repeat * item[0].GetArrayLength() + kinds.Count > MaxLayers)
                    throw r.Error($"attention_types entries must be [[kinds...], repeat], got {ConfigReader.Quote(item.GetRawText())}");
                for (int i = 0; i < repeat; i++)
                    kinds.AddRange(item[0].EnumerateArray().Select(k => k.ValueKind == JsonValueKind.String ? k.GetString()! : k.GetRawText()));
            }
        }
        else if (r.Root.TryGetProperty("attention_layers", out var layersList) && layersList.ValueKind == JsonValueKind.Array)
        {
            kinds.AddRange(layersList.EnumerateArray().Select(k => k.ValueKind == JsonValueKind.String ? k.GetString()! : k.GetRawText()));
        }
        else
        {
            // GPTNeoConfig's default attention_types: [[["global", "local"], 12]].
            for (int i = 0; i < 12; i++)
                kinds.AddRange(["global", "local"]);
        }
        if (kinds.Count != layers)
            throw r.Error($"attention_types expand to {kinds.Count} layers, num_layers is {layers}");
        foreach (var k in kinds)
        {
            if (k is not ("global" or "local"))
                throw r.Error($"attention_types has '{ConfigReader.Quote(k)}'; GPT-Neo layers are 'global' or 'local'");
        }
        bool anyLocal = kinds.Contains("local");
        return new ModelConfig
        {
            Architecture = r.Arch,
            NLayers = layers,
            DModel = d,
            NHeads = heads,
            NKvHeads = heads,
            DHead = d / heads,
            DMlp = r.Int("intermediate_size", d is > 0 and <= int.MaxValue / 4 ? 4 * d : 0),
            VocabSize = r.Int("vocab_size"),
            ContextLength = r.Int("max_position_embeddings", 2048),
            Norm = NormKind.LayerNorm,
            NormEps = r.Real("layer_norm_epsilon", 1e-5),
            Positional = PositionalKind.Learned,
            Mlp = r.GeluActivation("activation_function", "gelu_new"),
            // GPT-Neo does not scale scores by 1/sqrt(d_head).
            AttentionScale = 1.0,
            SlidingWindow = anyLocal ? r.Int("window_size", 256) : null,
            SlidingLayers = anyLocal ? kinds.Select(k => k == "local").ToList() : null,
            TiedEmbeddings = r.Flag("tie_word_embeddings", true),
            BosTokenId = r.TokenId("bos_token_id"),
            EosTokenIds = r.EosIds(),
        };
    }

    private static ModelConfig GptJConfig(ConfigReader r)
    {
        int d = r.Int("n_embd"), heads = r.Int("n_head");
        if (heads <= 0 || d % heads != 0)
            throw r.Error($"n_embd ({d}) must be a multiple of n_head ({heads})");
        int dh = d / heads;
        // GPTJConfig: rotary_dim absent = 64, null = the whole head.
        int rot = r.Root.TryGetProperty("rotary_dim", out _) ? r.Int("rotary_dim", dh) : 64;
        return new ModelConfig
        {
            Architecture = r.Arch,
            NLayers = r.Int("n_layer"),
            DModel = d,
            NHeads = heads,
            NKvHeads = heads,
            DHead = dh,
            DMlp = r.Int("n_inner", d is > 0 and <= int.MaxValue / 4 ? 4 * d : 0),
            VocabSize = r.Int("vocab_size"),
            ContextLength = r.Int("n_positions", 2048),
            Norm = NormKind.LayerNorm,
            NormEps = r.Real("layer_norm_epsilon", 1e-5),
            Positional = PositionalKind.Rotary,
            // GPT-J's rotary base is fixed at 10000 in transformers (no config key).
            RopeTheta = 10000,
            RotaryDim = rot,
            RotaryInterleaved = true,
            Mlp = r.GeluActivation("activation_function", "gelu_new"),
            Residual = ResidualKind.ParallelSharedNorm,
            UnembedBias = true,
            TiedEmbeddings = r.Flag("tie_word_embeddings", false),
            BosTokenId = r.TokenId("bos_token_id"),
            EosTokenIds = r.EosIds(),
        };
    }

    private static ModelConfig GptNeoXConfig(ConfigReader r)
    {
        int d = r.Int("hidden_size"), heads = r.Int("num_attention_heads");
        if (heads <= 0 || d % heads != 0)
            throw r.Error($"hidden_size ({d}) must be a multiple of num_attention_heads ({heads})");
        int dh = d / heads;
        int maxPos = r.Int("max_position_embeddings", 2048);
        double pct = r.PartialRotary("rotary_pct", 0.25); // GPTNeoXConfig's default
        int rot = (int)(dh * pct);
        var rope = r.Rope(maxPos, rot, r.Has("rope_theta") ? "rope_theta" : "rotary_emb_base");
        return new ModelConfig
        {
            Architecture = r.Arch,
            NLayers = r.Int("num_hidden_layers"),
            DModel = d,
            NHeads = heads,
            NKvHeads = heads,
            DHead = dh,
            DMlp = r.Int("intermediate_size"),
            VocabSize = r.Int("vocab_size"),
            ContextLength = maxPos,
            Norm = NormKind.LayerNorm,
            NormEps = r.Real("layer_norm_eps", 1e-5),
            Positional = PositionalKind.Rotary,
            RopeTheta = rope.Theta,
            Rope = rope,
            RotaryDim = rot,
            Mlp = r.GeluActivation("hidden_act", "gelu"),
            AttentionBias = r.Flag("attention_bias", true),
            Residual = r.Flag("use_parallel_residual", true) ? ResidualKind.Parallel : ResidualKind.Sequential,
            TiedEmbeddings = r.Flag("tie_word_embeddings", false),
            BosTokenId = r.TokenId("bos_token_id"),
            EosTokenIds = r.EosIds(),
        };
    }

    /// <summary>Llama, Mistral, Qwen2/3, Phi-3, OLMo-2 and Gemma 1/2/3: RMSNorm, rotary, gated MLP.</summary>
    private static ModelConfig LlamaFamilyConfig(ConfigReader r)
    {
        string arch = r.Arch;
        bool gemma = arch.StartsWith("Gemma", StringComparison.Ordinal);
        bool gemma2Plus = arch is "Gemma2ForCausalLM" or "Gemma3ForCausalLM";
        int d = r.Int("hidden_size"), heads = r.Int("num_attention_heads");
        if (heads <= 0)
            throw r.Error($"num_attention_heads must be positive, got {heads}");
        int layers = r.Layers("num_hidden_layers");
        // Defaults of the configuration classes, for keys a config.json leaves out.
        int headDim = r.Int("head_dim", gemma ? 256 : arch == "Qwen3ForCausalLM" ? 128 : d / heads);
        double defaultEps = arch is "Phi3ForCausalLM" or "Olmo2ForCausalLM" ? 1e-5 : 1e-6;
        int maxPos = r.Int("max_position_embeddings", arch switch { "Gemma3ForCausalLM" => 131072, "Phi3ForCausalLM" => 4096, _ => 2048 });

        MlpKind mlp;
        if (gemma)
        {
            // Gemma 1 reads hidden_act (transformers >= 4.48; hidden_activation before); Gemma 2/3 read hidden_activation.
            string? act = r.Text("hidden_act"), activation = r.Text("hidden_activation");
            if (act is not null && activation is not null && act != activation && !gemma2Plus)
                throw r.Error($"hidden_act '{ConfigReader.Quote(act)}' and hidden_activation '{ConfigReader.Quote(activation)}' differ; transformers versions disagree on which Gemma uses, so this config is ambiguous");
            string chosen = (gemma2Plus ? activation ?? act : act ?? activation) ?? "gelu_pytorch_tanh";
            string key = gemma2Plus ? (activation is not null ? "hidden_activation" : "hidden_act") : (act is not null ? "hidden_act" : "hidden_activation");
            mlp = chosen is "gelu_pytorch_tanh" or "gelu_new" or "gelu_fast" ? MlpKind.GeGlu
                : throw r.Error($"{key} '{ConfigReader.Quote(chosen)}' is not supported for {arch} (supported: gelu_pytorch_tanh)");
        }
        else
        {
            string act = r.Text("hidden_act") ?? "silu";
            mlp = act == "silu" ? MlpKind.SwiGlu : throw r.Error($"hidden_act '{ConfigReader.Quote(act)}' is not supported (supported: silu)");
        }

        double partial = arch is "Phi3ForCausalLM" ? r.PartialRotary("partial_rotary_factor", 1.0) : r.PartialRotary("partial_rotary_factor", 1.0, onlyDefault: true);
        int rot = (int)(headDim * partial);

        // Sliding-window layers.
        int? window = null;
        IReadOnlyList<bool>? slidingLayers = r.LayerTypes(layers);
        switch (arch)
        {
            case "MistralForCausalLM" or "Phi3ForCausalLM":
                window = r.Window(arch == "MistralForCausalLM" ? 4096 : null);
                break;
            case "Qwen2ForCausalLM" or "Qwen3ForCausalLM":
                {
                    bool use = r.Flag("use_sliding_window", false);
                    window = use ? r.Window(4096) : null;
                    if (window is not null && slidingLayers is null)
                    {
                        int from = r.Int("max_window_layers", 28);
                        slidingLayers = Enumerable.Range(0, layers).Select(i => i >= from).ToList();
                    }
                    if (window is null)
                        slidingLayers = null;
                    break;
                }
            case "Gemma2ForCausalLM":
                window = r.Window(4096);
                slidingLayers ??= Enumerable.Range(0, layers).Select(i => (i + 1) % 2 != 0).ToList();
                break;
            case "Gemma3ForCausalLM":
                {
                    window = r.Window(4096);
                    int pattern = r.Int("sliding_window_pattern", 6);
                    if (pattern <= 0)
                        throw r.Error($"sliding_window_pattern must be positive, got {pattern}");
                    var derived = Enumerable.Range(0, layers).Select(i => (i + 1) % pattern != 0).ToList();
                    if (slidingLayers is not null && r.Has("sliding_window_pattern") && !slidingLayers.SequenceEqual(derived))
                        throw r.Error($"layer_types and sliding_window_pattern ({pattern}) disagree about which layers slide");
                    slidingLayers ??= derived;
                    r.RefuseUnless("use_bidirectional_attention", false, "only causal attention is supported");
                    break;
                }
            default:
                if (slidingLayers is not null && slidingLayers.Any(x => x))
                    throw r.Error($"layer_types asks for sliding_attention layers, which {arch} does not have");
                slidingLayers = null;
                break;
        }
        if (window is not null && slidingLayers is not null && !slidingLayers.Any(x => x))
            window = null;
        if (window is null)
            slidingLayers = null;

        RopeSettings rope, local;
        if (arch == "Gemma3ForCausalLM")
        {
            (rope, local) = r.Gemma3Rope(maxPos, rot);
        }
        else
        {
            rope = r.Rope(maxPos, rot, "rope_theta");
            local = rope;
        }

        // Qwen2 always has q/k/v biases; the others follow attention_bias (q, k, v and o) and Llama's mlp_bias.
        bool attentionBias = arch is not ("MistralForCausalLM" or "Qwen2ForCausalLM" or "Phi3ForCausalLM") && r.Flag("attention_bias", false);
        if (arch is "MistralForCausalLM" or "Phi3ForCausalLM")
            r.RefuseUnless("attention_bias", false, $"{arch} has no attention biases in transformers");
        bool mlpBias = arch == "LlamaForCausalLM" && r.Flag("mlp_bias", false);
        if (arch != "LlamaForCausalLM")
            r.RefuseUnless("mlp_bias", false, $"{arch} has no MLP biases in transformers");
        r.RefuseUnless("clip_qkv", null, "clipping q/k/v is not implemented");

        double? softcap = gemma2Plus ? r.OptionalReal("attn_logit_softcapping", arch == "Gemma2ForCausalLM" ? 50.0 : null) : null;
        double? finalCap = gemma2Plus ? r.OptionalReal("final_logit_softcapping", arch == "Gemma2ForCausalLM" ? 30.0 : null) : null;
        double? scale = null;
        if (gemma2Plus)
        {
            double scalar = r.Real("query_pre_attn_scalar", 256);
            scale = scalar > 0 && double.IsFinite(scalar) ? Math.Pow(scalar, -0.5) : throw r.Error($"query_pre_attn_scalar must be positive, got {scalar}");
        }
        return new ModelConfig
        {
            Architecture = arch,
            NLayers = layers,
            DModel = d,
            NHeads = heads,
            NKvHeads = r.Int("num_key_value_heads", heads),
            DHead = headDim,
            DMlp = r.Int("intermediate_size"),
            VocabSize = r.Int("vocab_size"),
            ContextLength = maxPos,
            Norm = NormKind.RmsNorm,
            NormEps = r.Real("rms_norm_eps", defaultEps),
            NormGainOffset = gemma,
            Positional = PositionalKind.Rotary,
            RopeTheta = rope.Theta,
            Rope = rope,
            LocalRope = ReferenceEquals(local, rope) ? null : local,
            RotaryDim = rot,
            Mlp = mlp,
            PreNorms = arch != "Olmo2ForCausalLM",
            PostNorms = gemma2Plus || arch == "Olmo2ForCausalLM",
            QkNorm = arch switch { "Qwen3ForCausalLM" or "Gemma3ForCausalLM" => QkNormKind.PerHead, "Olmo2ForCausalLM" => QkNormKind.WholeProjection, _ => QkNormKind.None },
            ScaleEmbeddings = gemma,
            AttentionScale = scale,
            AttnSoftcap = softcap,
            FinalSoftcap = finalCap,
            SlidingWindow = window,
            SlidingLayers = slidingLayers,
            AttentionBias = attentionBias,
            MlpBias = mlpBias,
            TiedEmbeddings = r.Flag("tie_word_embeddings", gemma),
            BosTokenId = r.TokenId("bos_token_id"),
            EosTokenIds = r.EosIds(),
        };
    }

    /// <summary>Typed access to config.json with errors that name the key and quote its value.</summary>
    private sealed class ConfigReader(string path, JsonElement root, string arch)
    {
        public string Arch { get; } = arch;
        public JsonElement Root { get; } = root;

        /// <summary>User input in a message: at most 100 characters.</summary>
        public static string Quote(string text) => text.Length <= 100 ? text : text[..100] + "…";

        public ModelFormatException Error(string problem) => new(path, problem);

        public bool Has(string name) => Root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

        private string Raw(string name) => Root.TryGetProperty(name, out var v) ? Quote(v.GetRawText()) : "(absent)";

        public int Int(string name, int? fallback = null)
        {
            if (Root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i))
                return i;
            if (Root.TryGetProperty(name, out v) && v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double dbl) && dbl == Math.Floor(dbl) && Math.Abs(dbl) < int.MaxValue)
                return (int)dbl;
            if (Root.TryGetProperty(name, out v) && v.ValueKind != JsonValueKind.Null)
                throw Error($"\"{name}\" must be an integer, got {Raw(name)}");
            return fallback ?? throw Error($"missing \"{name}\" (needed for {Arch})");
        }

        public int? OptionalInt(string name) => Has(name) ? Int(name) : null;

        /// <summary>A layer count, bounded before anything per layer is allocated.</summary>
        public int Layers(string name)
        {
            int n = Int(name);
            return n is > 0 and <= MaxLayers ? n : throw Error($"\"{name}\" must be between 1 and {MaxLayers}, got {n}");
        }

        /// <summary><c>sliding_window</c>: absent means the config class default, null means none.</summary>
        public int? Window(int? classDefault) =>
            !Root.TryGetProperty("sliding_window", out var v) ? classDefault : v.ValueKind == JsonValueKind.Null ? null : Int("sliding_window");

        public double Real(string name, double fallback)
        {
            if (!Root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
                return fallback;
            return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Error($"\"{name}\" must be a number, got {Raw(name)}");
        }

        public double? OptionalReal(string name, double? fallback)
        {
            if (!Root.TryGetProperty(name, out var v))
                return fallback;
            if (v.ValueKind == JsonValueKind.Null)
                return null;
            return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Error($"\"{name}\" must be a number or null, got {Raw(name)}");
        }

        public bool Flag(string name, bool fallback)
        {
            if (!Root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
                return fallback;
            return v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Error($"\"{name}\" must be true or false, got {Raw(name)}");
        }

        public string? Text(string name) =>
            Root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

        public int? TokenId(string name) =>
            Root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;

        /// <summary><c>eos_token_id</c> as a number or a list of numbers.</summary>
        public IReadOnlyList<int> EosIds()
        {
            if (!Root.TryGetProperty("eos_token_id", out var v) || v.ValueKind == JsonValueKind.Null)
                return [];
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int one))
                return [one];
            if (v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out _)))
                return v.EnumerateArray().Select(e => e.GetInt32()).ToList();
            throw Error($"\"eos_token_id\" must be an integer or a list of integers, got {Raw("eos_token_id")}");
        }

        /// <summary>Refuses a key whose value is present and differs from <paramref name="supported"/> (null: must be absent or null).</summary>
        public void RefuseUnless(string name, bool? supported, string why)
        {
            if (!Root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
                return;
            bool ok = supported is bool b && v.ValueKind is JsonValueKind.True or JsonValueKind.False && v.GetBoolean() == b;
            if (!ok)
                throw Error($"{name} = {Raw(name)} is not supported for {Arch}: {why}");
        }

        /// <summary>GELU variants for non-gated MLPs: tanh approximations (gelu_new and equivalents) or the exact erf gelu.</summary>
        public MlpKind GeluActivation(string name, string fallback)
        {
            string act = Text(name) ?? fallback;
            return act switch
            {
                "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => MlpKind.GeluTanh,
                "gelu" => MlpKind.Gelu,
                _ => throw Error($"{name} '{Quote(act)}' is not supported for {Arch} (supported: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu)"),
            };
        }

        /// <summary>Partial rotary factor from the top level or (v5) rope_parameters; <paramref name="onlyDefault"/> refuses anything but 1.</summary>
        public double PartialRotary(string name, double fallback, bool onlyDefault = false)
        {
            double value = Real(name, fallback);
            string key = name;
            if (Root.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object && rp.TryGetProperty("partial_rotary_factor", out var pv) && pv.ValueKind == JsonValueKind.Number)
            {
                value = pv.GetDouble();
                key = "rope_parameters.partial_rotary_factor";
            }
            if (Has("partial_rotary_factor") && name != "partial_rotary_factor")
            {
                value = Real("partial_rotary_factor", value);
                key = "partial_rotary_factor";
            }
            if (!(value > 0 && value <= 1))
                throw Error($"{key} must be in (0, 1], got {value}");
            if (onlyDefault && value != 1.0)
                throw Error($"{key} = {value} is not supported for {Arch} (its attention rotates the whole head)");
            return value;
        }

        /// <summary><c>layer_types</c> as "is sliding" per layer, or null when absent.</summary>
        public IReadOnlyList<bool>? LayerTypes(int layers)
        {
            if (!Root.TryGetProperty("layer_types", out var v) || v.ValueKind == JsonValueKind.Null)
                return null;
            if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() != layers)
                throw Error($"layer_types must list one type per layer ({layers}), got {Raw("layer_types")}");
            return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString() : null).Select(k => k switch
            {
                "sliding_attention" => true,
                "full_attention" => false,
                _ => throw Error($"layer_types has '{Quote(k ?? "non-string")}'; supported: sliding_attention, full_attention"),
            }).ToList();
        }

        /// <summary>
        /// RoPE from <c>rope_theta</c> + <c>rope_scaling</c> (v4) or <c>rope_parameters</c> (v5). Every
        /// <c>rope_type</c> transformers defines is honoured; parameters it would reject are refused.
        /// </summary>
        public RopeSettings Rope(int maxPos, int rotaryDim, string thetaKey, double defaultTheta = 10000)
        {
            if (Root.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object)
            {
                if (rp.TryGetProperty("full_attention", out var nested) && nested.ValueKind == JsonValueKind.Object)
                    rp = nested;
                double theta = rp.TryGetProperty("rope_theta", out var t) && t.ValueKind == JsonValueKind.Number ? t.GetDouble() : Real(thetaKey, defaultTheta);
                return Scaling(rp, "rope_parameters", theta, maxPos, rotaryDim);
            }
            double baseTheta = Real(thetaKey, defaultTheta);
            if (Root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object)
                return Scaling(rs, "rope_scaling", baseTheta, maxPos, rotaryDim);
            if (Root.TryGetProperty("rope_scaling", out rs) && rs.ValueKind != JsonValueKind.Null)
                throw Error($"rope_scaling must be an object or null, got {Raw("rope_scaling")}");
            return new RopeSettings { Theta = baseTheta };
        }

        /// <summary>Gemma 3: global layers use rope_theta with rope_scaling; sliding layers rope_local_base_freq, unscaled.</summary>
        public (RopeSettings Global, RopeSettings Local) Gemma3Rope(int maxPos, int rotaryDim)
        {
            if (Root.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object && rp.TryGetProperty("sliding_attention", out var sl) && sl.ValueKind == JsonValueKind.Object)
            {
                var global = Rope(maxPos, rotaryDim, "rope_theta", 1_000_000);
                double localTheta = sl.TryGetProperty("rope_theta", out var lt) && lt.ValueKind == JsonValueKind.Number ? lt.GetDouble() : 10000;
                return (global, Scaling(sl, "rope_parameters.sliding_attention", localTheta, maxPos, rotaryDim));
            }
            // Gemma3TextConfig's default rope_theta is 1e6.
            return (Rope(maxPos, rotaryDim, "rope_theta", 1_000_000), new RopeSettings { Theta = Real("rope_local_base_freq", 10000) });
        }

        private RopeSettings Scaling(JsonElement s, string where, double theta, int maxPos, int rotaryDim)
        {
            string Field(string key) => $"{where}.{key}";
            string? kind = (s.TryGetProperty("rope_type", out var rt) || s.TryGetProperty("type", out rt)) && rt.ValueKind == JsonValueKind.String ? rt.GetString() : null;
            double? Num(string key)
            {
                if (!s.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null)
                    return null;
                return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Error($"{Field(key)} must be a number, got {Quote(v.GetRawText())}");
            }
            double Need(string key) => Num(key) ?? throw Error($"{Field(key)} is required for rope_type '{kind}'");
            IReadOnlyList<double> List(string key, int count)
            {
                if (!s.TryGetProperty(key, out var v) || v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.Number))
                    throw Error($"{Field(key)} must be a list of {count} numbers for rope_type '{kind}'");
                var list = v.EnumerateArray().Select(e => e.GetDouble()).ToList();
                if (list.Count != count)
                    throw Error($"{Field(key)} has {list.Count} numbers, expected rotary_dim / 2 = {count}");
                return list;
            }
            if (theta <= 0 || !double.IsFinite(theta))
                throw Error($"rope theta must be positive, got {theta}");
            int original = (int)(Num("original_max_position_embeddings") ?? (Has("original_max_position_embeddings") ? Int("original_max_position_embeddings") : maxPos));
            var result = new RopeSettings { Theta = theta };
            switch (kind)
            {
                case null or "default":
                    return result;
                case "linear":
                    return result with { Scaling = RopeScalingKind.Linear, Factor = Positive("factor", Need("factor")) };
                case "dynamic":
                    return result with { Scaling = RopeScalingKind.Dynamic, Factor = Positive("factor", Need("factor")) };
                case "llama3":
                    {
                        double low = Need("low_freq_factor"), high = Need("high_freq_factor");
                        if (!(high > low))
                            throw Error($"{Field("high_freq_factor")} ({high}) must exceed {Field("low_freq_factor")} ({low})");
                        return result with
                        {
                            Scaling = RopeScalingKind.Llama3, Factor = Positive("factor", Need("factor")), LowFreqFactor = low, HighFreqFactor = high,
                            OriginalContext = (int)Need("original_max_position_embeddings"),
                        };
                    }
                case "yarn":
                    {
                        double factor = Positive("factor", Need("factor"));
                        // transformers versions differ on whether a stated original context overrides
                        // factor (max_position_embeddings / original); refuse the configs where that matters.
                        if (Num("original_max_position_embeddings") is double o && Math.Abs(maxPos / o - factor) > 1e-9)
                            throw Error($"{Field("original_max_position_embeddings")} = {o} with factor {factor} and max_position_embeddings {maxPos}: transformers versions derive yarn's factor differently here; set factor = max_position_embeddings / original_max_position_embeddings");
                        bool truncate = !s.TryGetProperty("truncate", out var tr) || tr.ValueKind != JsonValueKind.False;
                        return result with
                        {
                            Scaling = RopeScalingKind.Yarn, Factor = factor, OriginalContext = original,
                            BetaFast = Num("beta_fast") ?? 32, BetaSlow = Num("beta_slow") ?? 1, Truncate = truncate,
                            AttentionFactor = Num("attention_factor"), Mscale = Num("mscale"), MscaleAllDim = Num("mscale_all_dim"),
                        };
                    }
                case "longrope" or "su":
                    {
                        // Phi-3 states original_max_position_embeddings at the top level; factor is then max / original.
                        int orig = Has("original_max_position_embeddings") ? Int("original_max_position_embeddings") : maxPos;
                        double factor = Has("original_max_position_embeddings") ? (double)maxPos / orig : Num("factor") ?? 1.0;
                        return result with
                        {
                            Scaling = RopeScalingKind.LongRope, Factor = factor, OriginalContext = orig, AttentionFactor = Num("attention_factor"),
                            ShortFactor = List("short_factor", rotaryDim / 2), LongFactor = List("long_factor", rotaryDim / 2),
                        };
                    }
                default:
                    throw Error($"{Field("rope_type")} '{Quote(kind)}' is not supported (supported: default, linear, dynamic, yarn, longrope, llama3)");
            }

            double Positive(string key, double value) => value > 0 && double.IsFinite(value) ? value : throw Error($"{Field(key)} must be positive, got {value}");
        }
    }

    private static TransformerWeights LoadGpt2(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        string p = files.Has("transformer.wte.weight") ? "transformer." : "";
        // GPT-2 stores Conv1D weights as [in, out], the compute layout: read as they are and seen
        // [out, in] through a view, which FromCheckpointLayout turns back without a copy.
        Tensor Conv(string name)
        {
            using var stored = files.Read(p + name, dtype);
            return stored.t();
        }
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
        var unembed = Unembedding(c, files, dtype, embed, "lm_head.weight");
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

    private static Tensor Fuse(WeightFiles files, ModelConfig c, params Tensor[] parts)
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

    private static Tensor Unembedding(ModelConfig c, WeightFiles files, ScalarType dtype, Tensor embed, string name)
    {
        if (c.TiedEmbeddings)
            return embed;
        return files.Has(name) ? files.Read(name, dtype)
            : throw new ModelFormatException(files.Folder, $"missing tensor '{name}' (tie_word_embeddings is false)");
    }

    private static TransformerWeights LoadGptNeo(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        Tensor W(string name) => files.Read("transformer." + name, dtype);
        var embed = W("wte.weight");
        var blocks = new List<BlockWeights>();
        for (int l = 0; l < c.NLayers; l++)
        {
            string h = $"h.{l}.";
            string a = h + "attn.attention.";
            blocks.Add(new BlockWeights
            {
                Ln1Weight = W(h + "ln_1.weight"),
                Ln1Bias = W(h + "ln_1.bias"),
                Qkv = files.ReadConcat(dtype, "transformer." + a + "q_proj.weight", "transformer." + a + "k_proj.weight", "transformer." + a + "v_proj.weight"),
                Out = W(a + "out_proj.weight"),
                OutBias = W(a + "out_proj.bias"),
                Ln2Weight = W(h + "ln_2.weight"),
                Ln2Bias = W(h + "ln_2.bias"),
                MlpIn = W(h + "mlp.c_fc.weight"),
                MlpInBias = W(h + "mlp.c_fc.bias"),
                MlpOut = W(h + "mlp.c_proj.weight"),
                MlpOutBias = W(h + "mlp.c_proj.bias"),
            });
        }
        return new TransformerWeights
        {
            Embed = embed,
            PosEmbed = W("wpe.weight"),
            Blocks = blocks,
            LnFinalWeight = W("ln_f.weight"),
            LnFinalBias = W("ln_f.bias"),
            Unembed = Unembedding(c, files, dtype, embed, "lm_head.weight"),
        };
    }

    private static TransformerWeights LoadGptJ(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        Tensor W(string name) => files.Read("transformer." + name, dtype);
        var embed = W("wte.weight");
        var blocks = new List<BlockWeights>();
        for (int l = 0; l < c.NLayers; l++)
        {
            string h = $"h.{l}.";
            blocks.Add(new BlockWeights
            {
                Ln1Weight = W(h + "ln_1.weight"),
                Ln1Bias = W(h + "ln_1.bias"),
                Qkv = files.ReadConcat(dtype, "transformer." + h + "attn.q_proj.weight", "transformer." + h + "attn.k_proj.weight", "transformer." + h + "attn.v_proj.weight"),
                Out = W(h + "attn.out_proj.weight"),
                Ln2Weight = null,
                MlpIn = W(h + "mlp.fc_in.weight"),
                MlpInBias = W(h + "mlp.fc_in.bias"),
                MlpOut = W(h + "mlp.fc_out.weight"),
                MlpOutBias = W(h + "mlp.fc_out.bias"),
            });
        }
        return new TransformerWeights
        {
            Embed = embed,
            Blocks = blocks,
            LnFinalWeight = W("ln_f.weight"),
            LnFinalBias = W("ln_f.bias"),
            Unembed = Unembedding(c, files, dtype, embed, "lm_head.weight"),
            UnembedBias = files.Read("lm_head.bias", dtype),
        };
    }

    private static TransformerWeights LoadGptNeoX(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        Tensor W(string name) => files.Read("gpt_neox." + name, dtype);
        // query_key_value rows are per head: [h0: q, k, v | h1: q, k, v | ...]; the runtime wants all q, all k, all v.
        Tensor Regroup(Tensor t)
        {
            var shape = t.shape;
            var rest = shape.Skip(1).ToArray();
            if (shape[0] != 3L * c.NHeads * c.DHead)
                return t;
            using var grouped = t.reshape([c.NHeads, 3, c.DHead, .. rest]);
            var result = grouped.transpose(0, 1).reshape(shape).contiguous();
            t.Dispose();
            return result;
        }
        var embed = W("embed_in.weight");
        var blocks = new List<BlockWeights>();
        for (int l = 0; l < c.NLayers; l++)
        {
            string h = $"layers.{l}.";
            blocks.Add(new BlockWeights
            {
                Ln1Weight = W(h + "input_layernorm.weight"),
                Ln1Bias = W(h + "input_layernorm.bias"),
                Qkv = Regroup(W(h + "attention.query_key_value.weight")),
                // attention_bias (default true) decides, as in transformers: stored biases are ignored when it is false.
                QkvBias = c.AttentionBias ? Regroup(W(h + "attention.query_key_value.bias")) : null,
                Out = W(h + "attention.dense.weight"),
                OutBias = c.AttentionBias ? W(h + "attention.dense.bias") : null,
                Ln2Weight = W(h + "post_attention_layernorm.weight"),
                Ln2Bias = W(h + "post_attention_layernorm.bias"),
                MlpIn = W(h + "mlp.dense_h_to_4h.weight"),
                MlpInBias = W(h + "mlp.dense_h_to_4h.bias"),
                MlpOut = W(h + "mlp.dense_4h_to_h.weight"),
                MlpOutBias = W(h + "mlp.dense_4h_to_h.bias"),
            });
        }
        return new TransformerWeights
        {
            Embed = embed,
            Blocks = blocks,
            LnFinalWeight = W("final_layer_norm.weight"),
            LnFinalBias = W("final_layer_norm.bias"),
            Unembed = Unembedding(c, files, dtype, embed, "embed_out.weight"),
        };
    }

    private static TransformerWeights LoadLlama(ModelConfig c, WeightFiles files, ScalarType dtype)
    {
        Tensor W(string name) => files.Read(name, dtype);
        // Gemma stores RMSNorm gains as w and applies (1 + w); add the 1 in float32, as transformers does.
        Tensor Gain(string name)
        {
            if (!c.NormGainOffset)
                return W(name);
            using var w = files.Read(name, ScalarType.Float32);
            using var shifted = Scalars.AddValue(w, 1.0f);
            return shifted.to(dtype);
        }
        Tensor? OptionalGain(string name) => files.Has(name) ? Gain(name) : null;

        var embed = W("model.embed_tokens.weight");
        var blocks = new List<BlockWeights>();
        bool olmo = c.Architecture == "Olmo2ForCausalLM";
        bool gemmaPost = c.PostNorms && !olmo;
        for (int l = 0; l < c.NLayers; l++)
        {
            string h = $"model.layers.{l}.";
            Tensor qkv;
            Tensor? qkvBias = null;
            if (files.Has(h + "self_attn.qkv_proj.weight"))
            {
                // Phi-3: fused [q | k | v] rows, the runtime's layout already.
                qkv = W(h + "self_attn.qkv_proj.weight");
                qkvBias = c.AttentionBias ? W(h + "self_attn.qkv_proj.bias") : null;
            }
            else
            {
                qkv = files.ReadConcat(dtype, h + "self_attn.q_proj.weight", h + "self_attn.k_proj.weight", h + "self_attn.v_proj.weight");
                // As transformers: biases exist when the config says so (Qwen2: always on q/k/v); stored ones are ignored otherwise.
                Tensor? Bias(string name) => c.AttentionBias || c.Architecture == "Qwen2ForCausalLM" ? W(name) : null;
                var qb = Bias(h + "self_attn.q_proj.bias");
                var kb = Bias(h + "self_attn.k_proj.bias");
                var vb = Bias(h + "self_attn.v_proj.bias");
                if (qb is not null || kb is not null || vb is not null)
                {
                    qb ??= zeros((long)c.NHeads * c.DHead, dtype: dtype, device: files.Device);
                    kb ??= zeros((long)c.NKvHeads * c.DHead, dtype: dtype, device: files.Device);
                    vb ??= zeros((long)c.NKvHeads * c.DHead, dtype: dtype, device: files.Device);
                    qkvBias = Fuse(files, c, qb, kb, vb);
                }
            }
            Tensor mlpIn;
            Tensor? mlpInBias = null;
            if (files.Has(h + "mlp.gate_up_proj.weight"))
            {
                // Phi-3: fused [gate | up] rows, the runtime's layout already.
                mlpIn = W(h + "mlp.gate_up_proj.weight");
                mlpInBias = c.MlpBias ? W(h + "mlp.gate_up_proj.bias") : null;
            }
            else
            {
                mlpIn = files.ReadConcat(dtype, h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight");
                var gb = c.MlpBias ? W(h + "mlp.gate_proj.bias") : null;
                var ub = c.MlpBias ? W(h + "mlp.up_proj.bias") : null;
                if (gb is not null || ub is not null)
                    mlpInBias = Fuse(files, c, gb ?? zeros(c.DMlp, dtype: dtype, device: files.Device), ub ?? zeros(c.DMlp, dtype: dtype, device: files.Device));
            }
            blocks.Add(new BlockWeights
            {
                Ln1Weight = olmo ? null : Gain(h + "input_layernorm.weight"),
                Qkv = qkv,
                QkvBias = qkvBias,
                Out = W(h + "self_attn.o_proj.weight"),
                OutBias = c.AttentionBias ? W(h + "self_attn.o_proj.bias") : null,
                // Gemma 2/3 name the pre-MLP norm pre_feedforward_layernorm; their post_attention_layernorm is a post-norm.
                Ln2Weight = olmo ? null : Gain(h + (gemmaPost ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")),
                Ln1PostWeight = c.PostNorms ? Gain(h + "post_attention_layernorm.weight") : null,
                Ln2PostWeight = c.PostNorms ? Gain(h + "post_feedforward_layernorm.weight") : null,
                QNormWeight = c.QkNorm != QkNormKind.None ? OptionalGain(h + "self_attn.q_norm.weight") : null,
                KNormWeight = c.QkNorm != QkNormKind.None ? OptionalGain(h + "self_attn.k_norm.weight") : null,
                MlpIn = mlpIn,
                MlpInBias = mlpInBias,
                MlpOut = W(h + "mlp.down_proj.weight"),
                MlpOutBias = c.MlpBias ? W(h + "mlp.down_proj.bias") : null,
            });
        }
        return new TransformerWeights
        {
            Embed = embed,
            Blocks = blocks,
            LnFinalWeight = Gain("model.norm.weight"),
            Unembed = Unembedding(c, files, dtype, embed, "lm_head.weight"),
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
