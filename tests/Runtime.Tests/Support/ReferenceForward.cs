using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace InterpMesh.Runtime.Tests.Support;

/// <summary>
/// A second, deliberately naive computation path for Hugging Face checkpoints: float64, one
/// sequence, unfused projections read by their HF names, a per-head attention loop with an explicit
/// causal mask, HF's rotate_half RoPE. Shares no code with the runtime's forward or loaders
/// beyond reading the safetensors bytes.
/// </summary>
internal static class ReferenceForward
{
    /// <param name="invFreq">Rotary inverse frequencies (default: θ^(−2i/d)).</param>
    /// <param name="ropeScale">Multiplier on cos and sin (yarn / longrope attention factor).</param>
    /// <param name="window">Sliding window: query i sees keys i − window &lt; j ≤ i.</param>
    public static Tensor Llama(IReadOnlyDictionary<string, Tensor> w, int layers, int heads, int kvHeads, int headDim, double eps, double theta, bool tied, int[] ids,
        double[]? invFreq = null, double ropeScale = 1.0, int? window = null)
    {
        Tensor W(string name) => w[name].to(ScalarType.Float64);
        Tensor Rms(Tensor x, Tensor g) => x / (x.pow(2).mean([-1], keepdim: true) + eps).sqrt() * g;
        int t = ids.Length;
        var x = W("model.embed_tokens.weight").index_select(0, tensor(ids.Select(i => (long)i).ToArray()));
        var inv = invFreq is null ? 1.0 / pow(theta, arange(0, headDim, 2, dtype: ScalarType.Float64) / headDim) : tensor(invFreq, dtype: ScalarType.Float64);
        var ang = arange(0, t, dtype: ScalarType.Float64).unsqueeze(1) * inv.unsqueeze(0);
        var cos = cat([ang, ang], 1).cos() * ropeScale;
        var sin = cat([ang, ang], 1).sin() * ropeScale;
        Tensor Rope(Tensor v) // [t, headDim]
        {
            var half = v.chunk(2, -1);
            return v * cos + cat([-half[1], half[0]], -1) * sin;
        }
        var causal = ones(t, t, dtype: ScalarType.Bool).tril();
        if (window is int win)
            causal = causal.logical_and(ones(t, t, dtype: ScalarType.Bool).triu(-(win - 1)));
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            Tensor Proj(Tensor h, string name) =>
                h.matmul(W(p + name + ".weight").t()) + (w.ContainsKey(p + name + ".bias") ? W(p + name + ".bias") : zeros(1, dtype: ScalarType.Float64));
            var h1 = Rms(x, W(p + "input_layernorm.weight"));
            var q = Proj(h1, "self_attn.q_proj");
            var k = Proj(h1, "self_attn.k_proj");
            var v = Proj(h1, "self_attn.v_proj");
            var outs = new List<Tensor>();
            for (int hh = 0; hh < heads; hh++)
            {
                int kv = hh / (heads / kvHeads);
                var qh = Rope(q.narrow(1, hh * headDim, headDim));
                var kh = Rope(k.narrow(1, kv * headDim, headDim));
                var vh = v.narrow(1, kv * headDim, headDim);
                var scores = qh.matmul(kh.t()) / Math.Sqrt(headDim);
                scores = scores.masked_fill(causal.logical_not(), double.NegativeInfinity);
                outs.Add(scores.softmax(-1).matmul(vh));
            }
            x = x + Proj(cat(outs, 1), "self_attn.o_proj");
            var h2 = Rms(x, W(p + "post_attention_layernorm.weight"));
            var mlp = Proj(F.silu(Proj(h2, "mlp.gate_proj")) * Proj(h2, "mlp.up_proj"), "mlp.down_proj");
            x = x + mlp;
        }
        x = Rms(x, W("model.norm.weight"));
        return x.matmul((tied ? W("model.embed_tokens.weight") : W("lm_head.weight")).t());
    }

    public static Tensor Gpt2(IReadOnlyDictionary<string, Tensor> w, int layers, int heads, double eps, bool tied, int[] ids)
    {
        string pre = w.ContainsKey("transformer.wte.weight") ? "transformer." : "";
        Tensor W(string name) => w[pre + name].to(ScalarType.Float64);
        Tensor Ln(Tensor x, string name) => (x - x.mean([-1], keepdim: true)) / (x.var(-1, unbiased: false, keepdim: true) + eps).sqrt() * W(name + ".weight") + W(name + ".bias");
        Tensor Gelu(Tensor x) => 0.5 * x * (1 + ((2 / Math.PI) is var c ? (Math.Sqrt(c) * (x + 0.044715 * x.pow(3))).tanh() : x));
        int t = ids.Length;
        var idx = tensor(ids.Select(i => (long)i).ToArray());
        var x = W("wte.weight").index_select(0, idx) + W("wpe.weight").narrow(0, 0, t);
        int d = (int)x.shape[1], dh = d / heads;
        var causal = ones(t, t, dtype: ScalarType.Bool).tril();
        for (int l = 0; l < layers; l++)
        {
            string p = $"h.{l}.";
            var qkv = Ln(x, p + "ln_1").matmul(W(p + "attn.c_attn.weight")) + W(p + "attn.c_attn.bias");
            var outs = new List<Tensor>();
            for (int hh = 0; hh < heads; hh++)
            {
                var q = qkv.narrow(1, hh * dh, dh);
                var k = qkv.narrow(1, d + hh * dh, dh);
                var v = qkv.narrow(1, 2 * d + hh * dh, dh);
                var scores = (q.matmul(k.t()) / Math.Sqrt(dh)).masked_fill(causal.logical_not(), double.NegativeInfinity);
                outs.Add(scores.softmax(-1).matmul(v));
            }
            x = x + cat(outs, 1).matmul(W(p + "attn.c_proj.weight")) + W(p + "attn.c_proj.bias");
            var hidden = Gelu(Ln(x, p + "ln_2").matmul(W(p + "mlp.c_fc.weight")) + W(p + "mlp.c_fc.bias"));
            x = x + hidden.matmul(W(p + "mlp.c_proj.weight")) + W(p + "mlp.c_proj.bias");
        }
        x = Ln(x, "ln_f");
        return x.matmul((tied ? W("wte.weight") : w["lm_head.weight"].to(ScalarType.Float64)).t());
    }

    /// <summary>Every tensor of a safetensors file, as stored.</summary>
    public static Dictionary<string, Tensor> ReadAll(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        return f.Entries.Keys.ToDictionary(k => k, k => f.Read(k));
    }
}
