using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Architectures;

/// <summary>
/// One parameter under its TransformerLens name, in TransformerLens' layout.
/// <see cref="Open"/> makes a tensor (a view where the compute layout allows one, else a copy of
/// this one weight) that the caller disposes; nothing is materialised until then.
/// </summary>
public sealed record WeightEntry(string Name, long[] Shape, Func<Tensor> Open);

/// <summary>
/// The model's parameters under TransformerLens names (<c>embed.W_E</c>, <c>blocks.0.attn.W_Q</c>,
/// ...) and layouts (per-head <c>[head, d_model, d_head]</c> projections, <c>[in, out]</c> matrices),
/// derived once for every family from <see cref="ModelConfig"/> and the compute layout of
/// <see cref="TransformerWeights"/>. Values are the checkpoint's, unprocessed (TransformerLens'
/// <c>from_pretrained_no_processing</c>: no LayerNorm folding, no centring), except what the
/// runtime applies at load as TransformerLens does too: Gemma's norm gains are served as applied,
/// <c>1 + w</c>. Only parameters the model has are listed: a model without biases has no
/// <c>b_Q</c> (TransformerLens would show zeros).
/// </summary>
public sealed class WeightCatalogue
{
    private readonly Dictionary<string, WeightEntry> byName;

    public WeightCatalogue(ModelConfig c, TransformerWeights w)
    {
        var list = new List<WeightEntry>();
        void Add(string name, Tensor? source, long[] shape, Func<Tensor, Tensor> layout)
        {
            if (source is not null)
                list.Add(new WeightEntry(name, shape, () => layout(source)));
        }
        // A new handle on the same memory, so that the caller may dispose what it was given.
        static Tensor Alias(Tensor t) => t.narrow(0, 0, t.shape[0]);

        long d = c.DModel, h = c.NHeads, kv = c.NKvHeads, dh = c.DHead, mlp = c.DMlp, vocab = c.VocabSize;
        Add("embed.W_E", w.Embed, [vocab, d], Alias);
        Add("pos_embed.W_pos", c.Positional == PositionalKind.Learned ? w.PosEmbed : null, [c.ContextLength, d], Alias);
        for (int l = 0; l < w.Blocks.Count; l++)
        {
            var b = w.Blocks[l];
            string p = $"blocks.{l}.";
            Add(p + "ln1.w", b.Ln1Weight, [d], Alias);
            Add(p + "ln1.b", b.Ln1Bias, [d], Alias);
            // GPT-J's one norm feeds both; it is served once, as ln1.
            if (c.Residual != ResidualKind.ParallelSharedNorm)
            {
                Add(p + "ln2.w", b.Ln2Weight, [d], Alias);
                Add(p + "ln2.b", b.Ln2Bias, [d], Alias);
            }
            Add(p + "ln1_post.w", b.Ln1PostWeight, [d], Alias);
            Add(p + "ln2_post.w", b.Ln2PostWeight, [d], Alias);
            // Qkv is [d_model, (h + 2·kv)·d_head]: q columns, then k, then v, each head's d_head together.
            (string Name, long Start, long Heads)[] parts = [("Q", 0, h), ("K", h * dh, kv), ("V", (h + kv) * dh, kv)];
            foreach (var (name, start, heads) in parts)
            {
                Add(p + "attn.W_" + name, b.Qkv, [heads, d, dh], qkv => qkv.narrow(1, start, heads * dh).unflatten(1, [heads, dh]).permute(1, 0, 2));
                Add(p + "attn.b_" + name, b.QkvBias, [heads, dh], bias => bias.narrow(0, start, heads * dh).view(heads, dh));
            }
            if (c.QkNorm != QkNormKind.None)
            {
                bool whole = c.QkNorm == QkNormKind.WholeProjection;
                Add(p + "attn.q_norm.w", b.QNormWeight, [whole ? h * dh : dh], Alias);
                Add(p + "attn.k_norm.w", b.KNormWeight, [whole ? kv * dh : dh], Alias);
            }
            Add(p + "attn.W_O", b.Out, [h, dh, d], o => o.view(h, dh, d));
            Add(p + "attn.b_O", b.OutBias, [d], Alias);
            if (c.GatedMlp)
            {
                // MlpIn is [d_model, 2·d_mlp], gate columns first; TransformerLens' W_in is the up projection.
                Add(p + "mlp.W_gate", b.MlpIn, [d, mlp], m => m.narrow(1, 0, mlp));
                Add(p + "mlp.W_in", b.MlpIn, [d, mlp], m => m.narrow(1, mlp, mlp));
                Add(p + "mlp.b_gate", b.MlpInBias, [mlp], m => m.narrow(0, 0, mlp));
                Add(p + "mlp.b_in", b.MlpInBias, [mlp], m => m.narrow(0, mlp, mlp));
            }
            else
            {
                Add(p + "mlp.W_in", b.MlpIn, [d, mlp], Alias);
                Add(p + "mlp.b_in", b.MlpInBias, [mlp], Alias);
            }
            Add(p + "mlp.W_out", b.MlpOut, [mlp, d], Alias);
            Add(p + "mlp.b_out", b.MlpOutBias, [d], Alias);
        }
        Add("ln_final.w", w.LnFinalWeight, [d], Alias);
        Add("ln_final.b", w.LnFinalBias, [d], Alias);
        Add("unembed.W_U", w.Unembed, [d, vocab], Alias);
        Add("unembed.b_U", w.UnembedBias, [vocab], Alias);
        All = list;
        Layers = w.Blocks.Count;
        byName = list.ToDictionary(e => e.Name, StringComparer.Ordinal);
    }

    /// <summary>Longest name or glob a request may give.</summary>
    public const int MaxNameLength = 256;

    /// <summary>Every parameter, in model order (embeddings, blocks, final norm, unembedding).</summary>
    public IReadOnlyList<WeightEntry> All { get; }

    /// <summary>
    /// The entries named by exact names or globs (<c>*</c> any run of characters, <c>?</c> one), in
    /// model order, each once. Throws <see cref="InvalidRequestException"/> saying what to fix for
    /// no names, an over-long name, an unknown name or a glob that matches nothing.
    /// </summary>
    public IReadOnlyList<WeightEntry> Resolve(IReadOnlyList<string> patterns)
    {
        if (patterns.Count == 0)
            throw new InvalidRequestException("name the weights to get, e.g. 'embed.W_E', 'blocks.0.attn.W_Q' or 'blocks.*.mlp.W_out' (GetWeights does not send the whole model unasked)");
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var pattern in patterns)
        {
            if (pattern.Length > MaxNameLength)
                throw new InvalidRequestException($"weight name {InvalidRequestException.Quote(pattern)} is longer than {MaxNameLength} characters; names look like 'blocks.0.attn.W_Q'");
            if (!pattern.Contains('*') && !pattern.Contains('?'))
            {
                if (!byName.ContainsKey(pattern))
                    throw new InvalidRequestException($"unknown weight {InvalidRequestException.Quote(pattern)}; this model's weights include {Examples()}");
                chosen.Add(pattern);
                continue;
            }
            bool any = false;
            foreach (var e in All)
            {
                if (HookCatalogue.GlobMatches(pattern, e.Name))
                {
                    chosen.Add(e.Name);
                    any = true;
                }
            }
            if (!any)
                throw new InvalidRequestException($"weight glob {InvalidRequestException.Quote(pattern)} matches no weight of this model; its weights include {Examples()}");
        }
        return All.Where(e => chosen.Contains(e.Name)).ToList();
    }

    private string Examples()
    {
        string[] preferred = ["embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_Q", "blocks.0.attn.W_O", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out", "blocks.0.ln1.w", "ln_final.w", "unembed.W_U"];
        return string.Join(", ", preferred.Where(byName.ContainsKey).Select(n => $"'{n}'"))
            + $" and globs such as 'blocks.*.attn.W_O' (layers 0 to {Layers - 1})";
    }

    private int Layers { get; }
}
