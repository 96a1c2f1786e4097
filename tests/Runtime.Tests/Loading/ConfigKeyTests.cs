using System.Text.Json.Nodes;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Loading;

/// <summary>What a non-default value of a config key must do.</summary>
public enum KeyOutcome
{
    /// <summary>Loads, and the logits change (the key is read and acted on).</summary>
    Changes,
    /// <summary>Loads with identical logits: the key has no effect at inference in float32 (dropout, tensor-parallel split, ...).</summary>
    NoEffect,
    /// <summary>Refused with a ModelFormatException naming the key and its value.</summary>
    Refused,
    /// <summary>The key adds tensors (biases, an untied head) the fixture lacks: loading names the missing tensor.</summary>
    NeedsTensor,
}

/// <summary>
/// Nothing silently wrong: for each supported family, the keys of transformers' configuration class
/// that change the computation (dropouts, initialisers and cache settings do not), each set to a
/// non-default value on the family fixture. A key is either honoured or refused by name and value.
/// Shape keys (hidden_size, head_dim, n_inner, ...) are checked by the weight shapes and the golden tests.
/// </summary>
public sealed class ConfigKeyTests : TorchTest
{
    public static TheoryData<string, string, KeyOutcome, string> Keys => new()
    {
        // GPT2Config
        { "gpt2", """{"scale_attn_by_inverse_layer_idx": false}""", KeyOutcome.Changes, "" },
        { "gpt2", """{"scale_attn_weights": false}""", KeyOutcome.Changes, "" },
        { "gpt2", """{"layer_norm_epsilon": 0.5}""", KeyOutcome.Changes, "" },
        { "gpt2", """{"activation_function": "gelu"}""", KeyOutcome.Changes, "" },
        { "gpt2", """{"activation_function": "relu"}""", KeyOutcome.Refused, "activation_function|relu" },
        { "gpt2", """{"add_cross_attention": true}""", KeyOutcome.Refused, "add_cross_attention|true" },
        { "gpt2", """{"reorder_and_upcast_attn": true}""", KeyOutcome.NoEffect, "" },
        { "gpt2", """{"attn_pdrop": 0.5, "resid_pdrop": 0.5, "embd_pdrop": 0.5}""", KeyOutcome.NoEffect, "" },
        { "gpt2", """{"tie_word_embeddings": false}""", KeyOutcome.NeedsTensor, "lm_head.weight" },
        // GPTNeoConfig
        { "gpt_neo", """{"window_size": 6}""", KeyOutcome.Changes, "" },
        { "gpt_neo", """{"attention_types": [[["local"], 3]]}""", KeyOutcome.Changes, "" },
        { "gpt_neo", """{"attention_types": [[["sparse"], 3]]}""", KeyOutcome.Refused, "attention_types|sparse" },
        { "gpt_neo", """{"attention_types": [[["global"], "3"]]}""", KeyOutcome.Refused, "attention_types|3" },
        { "gpt_neo", """{"activation_function": "gelu"}""", KeyOutcome.Changes, "" },
        { "gpt_neo", """{"activation_function": "relu"}""", KeyOutcome.Refused, "activation_function|relu" },
        { "gpt_neo", """{"layer_norm_epsilon": 0.5}""", KeyOutcome.Changes, "" },
        // GPTJConfig
        { "gptj", """{"rotary_dim": 4}""", KeyOutcome.Changes, "" },
        { "gptj", """{"rotary_dim": null}""", KeyOutcome.Changes, "" },
        { "gptj", """{"activation_function": "gelu"}""", KeyOutcome.Changes, "" },
        { "gptj", """{"layer_norm_epsilon": 0.5}""", KeyOutcome.Changes, "" },
        { "gptj", """{"tie_word_embeddings": true}""", KeyOutcome.Changes, "" },
        // GPTNeoXConfig
        { "gpt_neox", """{"use_parallel_residual": false}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"rotary_pct": 0.5}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"rotary_emb_base": 100}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"rope_scaling": {"rope_type": "linear", "factor": 4.0}}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"hidden_act": "gelu_new"}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"hidden_act": "relu"}""", KeyOutcome.Refused, "hidden_act|relu" },
        { "gpt_neox", """{"layer_norm_eps": 0.5}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"attention_bias": false}""", KeyOutcome.Changes, "" },
        { "gpt_neox", """{"tie_word_embeddings": true}""", KeyOutcome.Changes, "" },
        // LlamaConfig
        { "llama", """{"rope_theta": 10000.0}""", KeyOutcome.Changes, "" },
        { "llama", """{"rope_scaling": null}""", KeyOutcome.Changes, "" },
        { "llama", """{"rope_scaling": {"rope_type": "linear", "factor": 4.0}}""", KeyOutcome.Changes, "" },
        { "llama", """{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}""", KeyOutcome.Changes, "" },
        { "llama", """{"rope_scaling": {"rope_type": "mystery", "factor": 4.0}}""", KeyOutcome.Refused, "rope_type|mystery" },
        { "llama", """{"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}""", KeyOutcome.Refused, "low_freq_factor" },
        { "llama", """{"rms_norm_eps": 0.5}""", KeyOutcome.Changes, "" },
        { "llama", """{"hidden_act": "gelu"}""", KeyOutcome.Refused, "hidden_act|gelu" },
        { "llama", """{"attention_bias": true}""", KeyOutcome.NeedsTensor, "self_attn.q_proj.bias" },
        { "llama", """{"mlp_bias": true}""", KeyOutcome.NeedsTensor, "mlp.gate_proj.bias" },
        { "llama", """{"partial_rotary_factor": 0.5}""", KeyOutcome.Refused, "partial_rotary_factor|0.5" },
        { "llama", """{"pretraining_tp": 2}""", KeyOutcome.NoEffect, "" },
        { "llama", """{"tie_word_embeddings": false}""", KeyOutcome.NeedsTensor, "lm_head.weight" },
        // MistralConfig
        { "mistral", """{"sliding_window": null}""", KeyOutcome.Changes, "" },
        { "mistral", """{"sliding_window": 8}""", KeyOutcome.Changes, "" },
        { "mistral", """{"rope_theta": 100.0}""", KeyOutcome.Changes, "" },
        { "mistral", """{"attention_bias": true}""", KeyOutcome.Refused, "attention_bias|true" },
        // Qwen3Config
        { "qwen3", """{"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1, "layer_types": null}""", KeyOutcome.Changes, "" },
        { "qwen3", """{"use_sliding_window": true, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention", "full_attention"]}""", KeyOutcome.Changes, "" },
        { "qwen3", """{"layer_types": ["full_attention", "chunked_attention", "full_attention"]}""", KeyOutcome.Refused, "layer_types|chunked_attention" },
        { "qwen3", """{"attention_bias": true}""", KeyOutcome.NeedsTensor, "self_attn.q_proj.bias" },
        { "qwen3", """{"rms_norm_eps": 0.5}""", KeyOutcome.Changes, "" },
        // Phi3Config
        { "phi3", """{"sliding_window": null}""", KeyOutcome.Changes, "" },
        { "phi3", """{"partial_rotary_factor": 0.5}""", KeyOutcome.Changes, "" },
        { "phi3", """{"rope_theta": 100.0}""", KeyOutcome.Changes, "" },
        { "phi3", """{"original_max_position_embeddings": 16, "rope_scaling": {"type": "longrope", "short_factor": [1, 1, 1, 1, 1, 1], "long_factor": [1, 2, 4, 8, 16, 32]}}""", KeyOutcome.Changes, "" },
        { "phi3", """{"rope_scaling": {"type": "longrope", "short_factor": [1, 1], "long_factor": [1, 2]}}""", KeyOutcome.Refused, "short_factor|2" },
        { "phi3", """{"hidden_act": "gelu"}""", KeyOutcome.Refused, "hidden_act|gelu" },
        // Olmo2Config
        { "olmo2", """{"rms_norm_eps": 0.5}""", KeyOutcome.Changes, "" },
        { "olmo2", """{"rope_theta": 100}""", KeyOutcome.Changes, "" },
        { "olmo2", """{"attention_bias": true}""", KeyOutcome.NeedsTensor, "self_attn.q_proj.bias" },
        { "olmo2", """{"clip_qkv": 8}""", KeyOutcome.Refused, "clip_qkv|8" },
        // GemmaConfig
        { "gemma", """{"rms_norm_eps": 0.5}""", KeyOutcome.Changes, "" },
        { "gemma", """{"rope_theta": 100.0}""", KeyOutcome.Changes, "" },
        { "gemma", """{"hidden_act": "gelu", "hidden_activation": "gelu"}""", KeyOutcome.Refused, "hidden_act|gelu" },
        { "gemma", """{"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu"}""", KeyOutcome.Refused, "hidden_activation|gelu" },
        { "gemma", """{"attention_bias": true}""", KeyOutcome.NeedsTensor, "self_attn.q_proj.bias" },
        { "gemma", """{"tie_word_embeddings": false}""", KeyOutcome.NeedsTensor, "lm_head.weight" },
        // Gemma2Config
        { "gemma2", """{"attn_logit_softcapping": null}""", KeyOutcome.Changes, "" },
        { "gemma2", """{"final_logit_softcapping": null}""", KeyOutcome.Changes, "" },
        { "gemma2", """{"query_pre_attn_scalar": 16}""", KeyOutcome.Changes, "" },
        { "gemma2", """{"sliding_window": 6}""", KeyOutcome.Changes, "" },
        { "gemma2", """{"layer_types": ["full_attention", "full_attention", "full_attention"]}""", KeyOutcome.Changes, "" },
        { "gemma2", """{"hidden_activation": "gelu"}""", KeyOutcome.Refused, "hidden_activation|gelu" },
        { "gemma2", """{"rms_norm_eps": 0.5}""", KeyOutcome.Changes, "" },
        { "gemma2", """{"num_hidden_layers": 2000000000}""", KeyOutcome.Refused, "num_hidden_layers|2000000000" },
        { "gemma2", """{"query_pre_attn_scalar": -4}""", KeyOutcome.Refused, "query_pre_attn_scalar|-4" },
        // Gemma3TextConfig
        { "gemma3_text", """{"rope_local_base_freq": 100.0}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"rope_scaling": null}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"rope_theta": 100.0}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"layer_types": null, "sliding_window_pattern": 2}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"sliding_window_pattern": 2}""", KeyOutcome.Refused, "sliding_window_pattern|2" },
        { "gemma3_text", """{"sliding_window": 6}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"attn_logit_softcapping": 2.0}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"final_logit_softcapping": 2.0}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"query_pre_attn_scalar": 16}""", KeyOutcome.Changes, "" },
        { "gemma3_text", """{"use_bidirectional_attention": true}""", KeyOutcome.Refused, "use_bidirectional_attention|true" },
    };

    /// <summary>A copy of a family fixture with <paramref name="patch"/> merged into config.json.</summary>
    internal static TempFolder Patched(string family, string patch)
    {
        var dir = new TempFolder();
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(RepoPaths.Fixture($"families/{family}/{f}"), dir.File(f));
        var config = JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!.AsObject();
        foreach (var (key, value) in JsonNode.Parse(patch)!.AsObject())
            config[key] = value?.DeepClone();
        File.WriteAllText(dir.File("config.json"), config.ToJsonString());
        return dir;
    }

    private static Tensor Logits(string folder, int[] ids)
    {
        using var model = ModelLoader.Load(folder);
        return model.Transformer.Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.All)!;
    }

    [Theory]
    [MemberData(nameof(Keys))]
    public void A_key_that_changes_the_computation_is_honoured_or_refused_by_name(string family, string patch, KeyOutcome outcome, string mentions)
    {
        var ids = Forward.FamilyModels.Golden(family).Ids;
        using var dir = Patched(family, patch);
        switch (outcome)
        {
            case KeyOutcome.Changes or KeyOutcome.NoEffect:
                {
                    var baseline = Logits(RepoPaths.Fixture("families/" + family), ids);
                    double diff = MaxAbsDiff(Logits(dir.Path, ids), baseline);
                    if (outcome == KeyOutcome.Changes)
                        Assert.True(diff > 1e-3, $"{family} {patch}: logits unchanged (max |Δ| {diff:E2}); the key is ignored");
                    else
                        Assert.True(diff <= 1e-5, $"{family} {patch}: expected no effect, logits moved by {diff:E2}");
                    break;
                }
            default:
                {
                    var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path).Dispose());
                    foreach (var part in mentions.Split('|'))
                        Assert.True(e.Message.Contains(part, StringComparison.Ordinal), $"{family} {patch}: message does not mention '{part}': {e.Message}");
                    if (outcome == KeyOutcome.NeedsTensor)
                        Assert.Contains("missing tensor", e.Message);
                    break;
                }
        }
    }

    [Fact]
    public void Refusals_quote_at_most_about_a_hundred_characters_of_the_value()
    {
        using var dir = Patched("llama", $$"""{"hidden_act": "{{new string('x', 5000)}}"}""");
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path).Dispose());
        Assert.True(e.Message.Length < 400, $"message of {e.Message.Length} characters");
        Assert.Contains("hidden_act", e.Message);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("olmo2")]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    public void The_transformers_v5_config_layout_computes_what_the_v4_layout_does(string family)
    {
        // v5: rope_theta and rope_scaling move into rope_parameters (per layer type for Gemma 3),
        // torch_dtype becomes dtype.
        var config = JsonNode.Parse(File.ReadAllText(RepoPaths.Fixture($"families/{family}/config.json")))!.AsObject();
        JsonObject Parameters(double theta, JsonNode? scaling)
        {
            var p = scaling is JsonObject o ? (JsonObject)o.DeepClone() : [];
            if (p.ContainsKey("type"))
            {
                p["rope_type"] = p["type"]!.DeepClone();
                p.Remove("type");
            }
            p["rope_theta"] = theta;
            p["rope_type"] ??= "default";
            return p;
        }
        double theta = config["rope_theta"]?.GetValue<double>() ?? config["rotary_emb_base"]?.GetValue<double>() ?? 10000;
        var v5 = (JsonObject)config.DeepClone();
        foreach (var k in new[] { "rope_theta", "rope_scaling", "rotary_emb_base", "rope_local_base_freq", "torch_dtype" })
            v5.Remove(k);
        v5["dtype"] = "float32";
        if (family == "gemma3_text")
            v5["rope_parameters"] = new JsonObject { ["full_attention"] = Parameters(theta, config["rope_scaling"]), ["sliding_attention"] = Parameters(config["rope_local_base_freq"]!.GetValue<double>(), null) };
        else
            v5["rope_parameters"] = Parameters(theta, config["rope_scaling"]);
        if (family == "gpt_neox")
        {
            v5.Remove("rotary_pct");
            v5["partial_rotary_factor"] = config["rotary_pct"]!.DeepClone();
        }
        using var dir = new TempFolder();
        File.Copy(RepoPaths.Fixture($"families/{family}/model.safetensors"), dir.File("model.safetensors"));
        File.WriteAllText(dir.File("config.json"), v5.ToJsonString());
        var ids = Forward.FamilyModels.Golden(family).Ids;
        double diff = MaxAbsDiff(Logits(dir.Path, ids), Logits(RepoPaths.Fixture("families/" + family), ids));
        Assert.True(diff == 0, $"{family}: v5 layout differs from v4 by {diff:E2}");
    }

    [Fact]
    public void Eos_token_id_lists_are_kept_whole()
    {
        using var dir = Patched("llama", """{"eos_token_id": [2, 5, 7]}""");
        var config = HuggingFaceCheckpoint.ReadConfig(dir.File("config.json"));
        Assert.Equal([2, 5, 7], config.EosTokenIds);
        Assert.Equal(2, config.EosTokenId);
    }

    [Fact]
    public void Gpt2_without_scale_attn_weights_keeps_only_the_inverse_layer_factor()
    {
        using var dir = Patched("gpt2", """{"scale_attn_weights": false}""");
        using var model = ModelLoader.Load(dir.Path);
        var m = model.Transformer;
        var cap = new Dictionary<string, Tensor>();
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_attn_scores"])], null);
        m.Forward(Ids(3, 14, 15, 92, 65, 35), null, plan, (h, v) => cap[h.Name] = v, LogitsMode.None);
        // transformers: no 1/sqrt(d_head), still / (layer_idx + 1) at layer 1.
        var expected = cap["blocks.1.attn.hook_q"][0].transpose(0, 1).matmul(cap["blocks.1.attn.hook_k"][0].permute(1, 2, 0)) / 2;
        var scores = cap["blocks.1.attn.hook_attn_scores"][0];
        var causal = ones(6, 6, ScalarType.Bool).tril();
        Assert.True(MaxAbsDiff(scores.masked_fill(causal.logical_not(), 0), expected.masked_fill(causal.logical_not(), 0)) < 1e-4);
    }

    [Theory]
    [InlineData("gpt_neox", "rotary_pct", """{"rotary_pct": 0.25}""")]
    [InlineData("phi3", "rms_norm_eps", """{"rms_norm_eps": 1e-5}""")]
    [InlineData("olmo2", "rms_norm_eps", """{"rms_norm_eps": 1e-5}""")]
    [InlineData("gemma3_text", "rope_theta", """{"rope_theta": 1000000.0}""")]
    [InlineData("gemma2", "attn_logit_softcapping", """{"attn_logit_softcapping": 50.0}""")]
    [InlineData("gemma2", "query_pre_attn_scalar", """{"query_pre_attn_scalar": 256}""")]
    [InlineData("mistral", "sliding_window", """{"sliding_window": 4096}""")]
    [InlineData("gpt2", "scale_attn_by_inverse_layer_idx", """{"scale_attn_by_inverse_layer_idx": false}""")]
    public void An_absent_key_takes_its_configuration_class_default(string family, string key, string defaultPatch)
    {
        using var absent = Patched(family, "{}");
        var config = JsonNode.Parse(File.ReadAllText(absent.File("config.json")))!.AsObject();
        Assert.True(config.Remove(key));
        File.WriteAllText(absent.File("config.json"), config.ToJsonString());
        using var explicitDefault = Patched(family, defaultPatch);
        var ids = Forward.FamilyModels.Golden(family).Ids;
        Assert.True(MaxAbsDiff(Logits(absent.Path, ids), Logits(explicitDefault.Path, ids)) == 0, $"{family}: absent {key} is not {defaultPatch}");
    }
}
