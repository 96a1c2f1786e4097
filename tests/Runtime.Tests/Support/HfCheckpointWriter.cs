using System.Text.Json;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Support;

/// <summary>Writes small random checkpoints in the Hugging Face layout, as transformers saves them.</summary>
internal static class HfCheckpointWriter
{
    public sealed record Shape(int Layers = 2, int Hidden = 32, int Heads = 4, int KvHeads = 2, int Intermediate = 48, int Vocab = 96, int Context = 64);

    public static Dictionary<string, Tensor> LlamaFamily(string arch, Shape s, bool tied, long seed)
    {
        using var g = new TorchSharp.torch.Generator((ulong)seed);
        Tensor R(params long[] shape) => randn(shape, generator: g) * 0.2f;
        int hd = s.Hidden / s.Heads;
        var w = new Dictionary<string, Tensor> { ["model.embed_tokens.weight"] = R(s.Vocab, s.Hidden), ["model.norm.weight"] = 1 + R(s.Hidden) };
        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            w[p + "input_layernorm.weight"] = 1 + R(s.Hidden);
            w[p + "post_attention_layernorm.weight"] = 1 + R(s.Hidden);
            w[p + "self_attn.q_proj.weight"] = R(s.Heads * hd, s.Hidden);
            w[p + "self_attn.k_proj.weight"] = R(s.KvHeads * hd, s.Hidden);
            w[p + "self_attn.v_proj.weight"] = R(s.KvHeads * hd, s.Hidden);
            w[p + "self_attn.o_proj.weight"] = R(s.Hidden, s.Heads * hd);
            if (arch == "Qwen2ForCausalLM")
            {
                w[p + "self_attn.q_proj.bias"] = R(s.Heads * hd);
                w[p + "self_attn.k_proj.bias"] = R(s.KvHeads * hd);
                w[p + "self_attn.v_proj.bias"] = R(s.KvHeads * hd);
            }
            w[p + "mlp.gate_proj.weight"] = R(s.Intermediate, s.Hidden);
            w[p + "mlp.up_proj.weight"] = R(s.Intermediate, s.Hidden);
            w[p + "mlp.down_proj.weight"] = R(s.Hidden, s.Intermediate);
        }
        if (!tied)
            w["lm_head.weight"] = R(s.Vocab, s.Hidden);
        return w;
    }

    public static Dictionary<string, object> LlamaConfig(string arch, Shape s, bool tied, double theta = 10000) => new()
    {
        ["architectures"] = new[] { arch },
        ["hidden_size"] = s.Hidden,
        ["intermediate_size"] = s.Intermediate,
        ["num_hidden_layers"] = s.Layers,
        ["num_attention_heads"] = s.Heads,
        ["num_key_value_heads"] = s.KvHeads,
        ["vocab_size"] = s.Vocab,
        ["max_position_embeddings"] = s.Context,
        ["rms_norm_eps"] = 1e-6,
        ["rope_theta"] = theta,
        ["hidden_act"] = "silu",
        ["tie_word_embeddings"] = tied,
    };

    /// <summary>Writes config.json and the weights, in one file or in <paramref name="shards"/> shards with an index.</summary>
    public static void Save(string folder, Dictionary<string, object> config, Dictionary<string, Tensor> weights, ScalarType dtype = ScalarType.Float32, int shards = 1)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config));
        var converted = weights.ToDictionary(kv => kv.Key, kv => kv.Value.to(dtype));
        if (shards == 1)
        {
            SafeTensorsFile.Write(Path.Combine(folder, "model.safetensors"), converted);
            return;
        }
        var names = converted.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var map = new Dictionary<string, string>();
        for (int i = 0; i < shards; i++)
        {
            string file = $"model-{i + 1:D5}-of-{shards:D5}.safetensors";
            var part = names.Where((_, j) => j % shards == i).ToDictionary(n => n, n => converted[n]);
            SafeTensorsFile.Write(Path.Combine(folder, file), part);
            foreach (var n in part.Keys)
                map[n] = file;
        }
        File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = map }));
    }
}
