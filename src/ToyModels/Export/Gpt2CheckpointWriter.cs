using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.ToyModels.Export;

/// <summary>
/// Saves a GPT-2-shaped model in the Hugging Face layout (<c>config.json</c> + <c>model.safetensors</c>,
/// Conv1D weights as <c>[in, out]</c>, tied head), which every part of InterpMesh and
/// <c>transformers.GPT2LMHeadModel</c> load.
/// </summary>
public static class Gpt2CheckpointWriter
{
    public static void Save(Transformer model, string folder, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var c = model.Config;
        if (c.Norm != NormKind.LayerNorm || c.Positional != PositionalKind.Learned || c.Mlp != MlpKind.GeluTanh || c.NKvHeads != c.NHeads || !c.TiedEmbeddings)
            throw new ArgumentException("only GPT-2-shaped models (LayerNorm, learned positions, GELU MLP, tied head) can be saved as GPT2LMHeadModel");
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();
        var w = model.Weights;
        Tensor Conv(Tensor t) => t.detach().t().contiguous();
        var tensors = new Dictionary<string, Tensor>
        {
            ["transformer.wte.weight"] = w.Embed.detach(),
            ["transformer.wpe.weight"] = w.PosEmbed!.detach(),
            ["transformer.ln_f.weight"] = w.LnFinalWeight.detach(),
            ["transformer.ln_f.bias"] = w.LnFinalBias!.detach(),
        };
        for (int l = 0; l < c.NLayers; l++)
        {
            var b = w.Blocks[l];
            string p = $"transformer.h.{l}.";
            tensors[p + "ln_1.weight"] = b.Ln1Weight.detach();
            tensors[p + "ln_1.bias"] = b.Ln1Bias!.detach();
            tensors[p + "attn.c_attn.weight"] = Conv(b.Qkv);
            tensors[p + "attn.c_attn.bias"] = b.QkvBias!.detach();
            tensors[p + "attn.c_proj.weight"] = Conv(b.Out);
            tensors[p + "attn.c_proj.bias"] = b.OutBias!.detach();
            tensors[p + "ln_2.weight"] = b.Ln2Weight.detach();
            tensors[p + "ln_2.bias"] = b.Ln2Bias!.detach();
            tensors[p + "mlp.c_fc.weight"] = Conv(b.MlpIn);
            tensors[p + "mlp.c_fc.bias"] = b.MlpInBias!.detach();
            tensors[p + "mlp.c_proj.weight"] = Conv(b.MlpOut);
            tensors[p + "mlp.c_proj.bias"] = b.MlpOutBias!.detach();
        }
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        foreach (var (k, v) in metadata ?? new Dictionary<string, string>())
            meta[k] = v;
        SafeTensorsFile.Write(Path.Combine(folder, "model.safetensors"), tensors, meta);

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
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }));
    }
}
