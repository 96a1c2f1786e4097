using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.ToyModels.Export;

/// <summary>
/// Saves a model in the Hugging Face layout (<c>config.json</c> + <c>model.safetensors</c>) as
/// <c>GPT2LMHeadModel</c> (Conv1D weights <c>[in, out]</c>) or <c>LlamaForCausalLM</c> (q/k rows
/// already in rotate_half order), which every part of InterpMesh and <c>transformers</c> load.
/// </summary>
public static class HfCheckpointWriter
{
    public static void Save(Transformer model, string folder, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var c = model.Config;
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();
        // Only the plain GPT-2 / Llama layouts are written; any family switch would be lost silently.
        bool plain = c.Residual == ResidualKind.Sequential && c.PreNorms && !c.PostNorms && c.QkNorm == QkNormKind.None && !c.NormGainOffset
            && !c.ScaleEmbeddings && c.AttentionScale is null && !c.ScaleByInverseLayer && c.AttnSoftcap is null && c.FinalSoftcap is null
            && c.SlidingWindow is null && (c.Rope is null || c.Rope.Scaling == RopeScalingKind.None) && c.LocalRope is null
            && !c.RotaryInterleaved && !c.UnembedBias && !c.AttentionBias && !c.MlpBias;
        if (!plain)
            throw new ArgumentException($"only plain GPT-2- or Llama-shaped models can be saved; {c.Architecture} uses family features (post-norms, q/k norms, soft-caps, windows, rope scaling, ...) this writer does not export");
        var (tensors, config) = c switch
        {
            { Norm: NormKind.LayerNorm, Positional: PositionalKind.Learned, Mlp: MlpKind.GeluTanh } when c.NKvHeads == c.NHeads && c.TiedEmbeddings => Gpt2(model),
            { Norm: NormKind.RmsNorm, Positional: PositionalKind.Rotary, Mlp: MlpKind.SwiGlu } when c.RotaryDim == c.DHead => Llama(model),
            _ => throw new ArgumentException("only GPT-2-shaped (LayerNorm, learned positions, GELU, tied head) or Llama-shaped (RMSNorm, full RoPE, SwiGLU) models can be saved"),
        };
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        foreach (var (k, v) in metadata ?? new Dictionary<string, string>())
            meta[k] = v;
        SafeTensorsFile.Write(Path.Combine(folder, "model.safetensors"), tensors, meta);
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }));
    }

    private static (Dictionary<string, Tensor>, Dictionary<string, object?>) Gpt2(Transformer model)
    {
        var c = model.Config;
        var w = model.Weights;
        // Conv1D stores [in, out]: the compute layout.
        Tensor Conv(Tensor t) => t.detach().contiguous();
        var tensors = new Dictionary<string, Tensor>
        {
            ["transformer.wte.weight"] = w.Embed.detach().contiguous(),
            ["transformer.wpe.weight"] = w.PosEmbed!.detach(),
            ["transformer.ln_f.weight"] = w.LnFinalWeight.detach(),
            ["transformer.ln_f.bias"] = w.LnFinalBias!.detach(),
        };
        for (int l = 0; l < c.NLayers; l++)
        {
            var b = w.Blocks[l];
            string p = $"transformer.h.{l}.";
            tensors[p + "ln_1.weight"] = b.Ln1Weight!.detach();
            tensors[p + "ln_1.bias"] = b.Ln1Bias!.detach();
            tensors[p + "attn.c_attn.weight"] = Conv(b.Qkv);
            tensors[p + "attn.c_attn.bias"] = b.QkvBias!.detach();
            tensors[p + "attn.c_proj.weight"] = Conv(b.Out);
            tensors[p + "attn.c_proj.bias"] = b.OutBias!.detach();
            tensors[p + "ln_2.weight"] = b.Ln2Weight!.detach();
            tensors[p + "ln_2.bias"] = b.Ln2Bias!.detach();
            tensors[p + "mlp.c_fc.weight"] = Conv(b.MlpIn);
            tensors[p + "mlp.c_fc.bias"] = b.MlpInBias!.detach();
            tensors[p + "mlp.c_proj.weight"] = Conv(b.MlpOut);
            tensors[p + "mlp.c_proj.bias"] = b.MlpOutBias!.detach();
        }
        var config = new Dictionary<string, object?>
        {
            ["architectures"] = new[] { "GPT2LMHeadModel" },
            ["model_type"] = "gpt2",
            ["vocab_size"] = c.VocabSize,
            ["n_positions"] = c.ContextLength,
            ["n_ctx"] = c.ContextLength,
            ["n_embd"] = c.DModel,
            ["n_layer"] = c.NLayers,
            ["n_head"] = c.NHeads,
            ["n_inner"] = c.DMlp,
            ["activation_function"] = "gelu_new",
            ["layer_norm_epsilon"] = c.NormEps,
            ["resid_pdrop"] = 0.0,
            ["embd_pdrop"] = 0.0,
            ["attn_pdrop"] = 0.0,
            ["scale_attn_weights"] = true,
            ["tie_word_embeddings"] = true,
            ["bos_token_id"] = c.BosTokenId,
            ["eos_token_id"] = c.EosTokenId,
            ["torch_dtype"] = "float32",
        };
        return (tensors, config);
    }

    private static (Dictionary<string, Tensor>, Dictionary<string, object?>) Llama(Transformer model)
    {
        var c = model.Config;
        var w = model.Weights;
        long q = (long)c.NHeads * c.DHead, kv = (long)c.NKvHeads * c.DHead;
        var tensors = new Dictionary<string, Tensor>
        {
            ["model.embed_tokens.weight"] = w.Embed.detach().contiguous(),
            ["model.norm.weight"] = w.LnFinalWeight.detach(),
        };
        if (!c.TiedEmbeddings)
            tensors["lm_head.weight"] = w.Unembed.detach().t().contiguous();
        for (int l = 0; l < c.NLayers; l++)
        {
            var b = w.Blocks[l];
            string p = $"model.layers.{l}.";
            // nn.Linear stores [out, in]: the compute layout transposed.
            var qkv = b.Qkv.detach().t();
            tensors[p + "input_layernorm.weight"] = b.Ln1Weight!.detach();
            tensors[p + "self_attn.q_proj.weight"] = qkv.narrow(0, 0, q).contiguous();
            tensors[p + "self_attn.k_proj.weight"] = qkv.narrow(0, q, kv).contiguous();
            tensors[p + "self_attn.v_proj.weight"] = qkv.narrow(0, q + kv, kv).contiguous();
            if (b.QkvBias is not null)
            {
                var bias = b.QkvBias.detach();
                tensors[p + "self_attn.q_proj.bias"] = bias.narrow(0, 0, q).contiguous();
                tensors[p + "self_attn.k_proj.bias"] = bias.narrow(0, q, kv).contiguous();
                tensors[p + "self_attn.v_proj.bias"] = bias.narrow(0, q + kv, kv).contiguous();
            }
            tensors[p + "self_attn.o_proj.weight"] = b.Out.detach().t().contiguous();
            tensors[p + "post_attention_layernorm.weight"] = b.Ln2Weight!.detach();
            var gateUp = b.MlpIn.detach().t();
            tensors[p + "mlp.gate_proj.weight"] = gateUp.narrow(0, 0, c.DMlp).contiguous();
            tensors[p + "mlp.up_proj.weight"] = gateUp.narrow(0, c.DMlp, c.DMlp).contiguous();
            tensors[p + "mlp.down_proj.weight"] = b.MlpOut.detach().t().contiguous();
        }
        var config = new Dictionary<string, object?>
        {
            ["architectures"] = new[] { "LlamaForCausalLM" },
            ["model_type"] = "llama",
            ["hidden_size"] = c.DModel,
            ["intermediate_size"] = c.DMlp,
            ["num_hidden_layers"] = c.NLayers,
            ["num_attention_heads"] = c.NHeads,
            ["num_key_value_heads"] = c.NKvHeads,
            ["head_dim"] = c.DHead,
            ["vocab_size"] = c.VocabSize,
            ["max_position_embeddings"] = c.ContextLength,
            ["rms_norm_eps"] = c.NormEps,
            ["rope_theta"] = c.RopeTheta,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = c.TiedEmbeddings,
            ["attention_bias"] = false,
            ["mlp_bias"] = false,
            ["bos_token_id"] = c.BosTokenId,
            ["eos_token_id"] = c.EosTokenId,
            ["torch_dtype"] = "float32",
        };
        return (tensors, config);
    }
}
