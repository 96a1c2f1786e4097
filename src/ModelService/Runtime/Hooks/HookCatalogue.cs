using InterpMesh.Runtime.Architectures;

namespace InterpMesh.Runtime.Hooks;

/// <summary>One hook point: its TransformerLens name, shape template and where it sits in the forward.</summary>
/// <param name="Name">TransformerLens name, e.g. <c>blocks.3.attn.hook_pattern</c>.</param>
/// <param name="Shape">Shape template with symbolic dimensions, e.g. <c>[batch, pos, head, d_head]</c>.</param>
/// <param name="Layer">Block index, -1 for embeddings, <c>n_layers</c> for the final norm and logits.</param>
/// <param name="Order">Position in the forward (strictly increasing along the computation).</param>
/// <param name="Layout">Which dimensions are positions and heads, for selections and per-head interventions.</param>
public sealed record HookInfo(string Name, string Shape, int Layer, int Order, HookLayout Layout);

/// <summary>Dimension layout of a hook's tensor.</summary>
public enum HookLayout
{
    /// <summary>[batch, pos, d] — positions on dim 1, no head dim.</summary>
    Positional,
    /// <summary>[batch, pos, head, d] — positions on dim 1, heads on dim 2.</summary>
    PositionalPerHead,
    /// <summary>[batch, head, query_pos, key_pos] — heads on dim 1, query positions on dim 2.</summary>
    AttentionMap,
}

/// <summary>
/// Every hook point a model exposes, in forward order, named as TransformerLens names them.
/// Shapes: <c>hook_k</c>/<c>hook_v</c> have <c>kv_head</c> heads (fewer than <c>head</c> under
/// grouped-query attention), as TransformerLens' GroupedQueryAttention does.
/// </summary>
public sealed class HookCatalogue
{
    private readonly Dictionary<string, HookInfo> byName;

    public HookCatalogue(ModelConfig config)
    {
        var list = new List<HookInfo>();
        void Add(string name, string shape, int layer, HookLayout layout) => list.Add(new HookInfo(name, shape, layer, list.Count, layout));

        const string resid = "[batch, pos, d_model]";
        Add("hook_embed", resid, -1, HookLayout.Positional);
        if (config.Positional == PositionalKind.Learned)
            Add("hook_pos_embed", resid, -1, HookLayout.Positional);
        const string scale = "[batch, pos, 1]";
        bool parallel = config.Residual != ResidualKind.Sequential;
        for (int l = 0; l < config.NLayers; l++)
        {
            var n = new LayerHookNames(l);
            Add(n.ResidPre, resid, l, HookLayout.Positional);
            // Optional split-input hooks: materialised only when a request names them.
            Add(n.AttnIn, "[batch, pos, head, d_model]", l, HookLayout.PositionalPerHead);
            Add(n.QInput, "[batch, pos, head, d_model]", l, HookLayout.PositionalPerHead);
            Add(n.KInput, "[batch, pos, kv_head, d_model]", l, HookLayout.PositionalPerHead);
            Add(n.VInput, "[batch, pos, kv_head, d_model]", l, HookLayout.PositionalPerHead);
            if (config.PreNorms)
            {
                Add(n.Ln1Scale, scale, l, HookLayout.Positional);
                Add(n.Ln1Normalized, resid, l, HookLayout.Positional);
            }
            Add(n.Q, "[batch, pos, head, d_head]", l, HookLayout.PositionalPerHead);
            Add(n.K, "[batch, pos, kv_head, d_head]", l, HookLayout.PositionalPerHead);
            Add(n.V, "[batch, pos, kv_head, d_head]", l, HookLayout.PositionalPerHead);
            if (config.Positional == PositionalKind.Rotary)
            {
                Add(n.RotQ, "[batch, pos, head, d_head]", l, HookLayout.PositionalPerHead);
                Add(n.RotK, "[batch, pos, kv_head, d_head]", l, HookLayout.PositionalPerHead);
            }
            Add(n.AttnScores, "[batch, head, query_pos, key_pos]", l, HookLayout.AttentionMap);
            Add(n.Pattern, "[batch, head, query_pos, key_pos]", l, HookLayout.AttentionMap);
            Add(n.Z, "[batch, pos, head, d_head]", l, HookLayout.PositionalPerHead);
            Add(n.Result, "[batch, pos, head, d_model]", l, HookLayout.PositionalPerHead);
            if (config.PostNorms)
            {
                Add(n.Ln1PostScale, scale, l, HookLayout.Positional);
                Add(n.Ln1PostNormalized, resid, l, HookLayout.Positional);
            }
            Add(n.AttnOut, resid, l, HookLayout.Positional);
            if (!parallel)
                Add(n.ResidMid, resid, l, HookLayout.Positional);
            Add(n.MlpIn, resid, l, HookLayout.Positional);
            if (config.PreNorms)
            {
                Add(n.Ln2Scale, scale, l, HookLayout.Positional);
                Add(n.Ln2Normalized, resid, l, HookLayout.Positional);
            }
            Add(n.MlpPre, "[batch, pos, d_mlp]", l, HookLayout.Positional);
            if (config.GatedMlp)
                Add(n.MlpPreLinear, "[batch, pos, d_mlp]", l, HookLayout.Positional);
            Add(n.MlpPost, "[batch, pos, d_mlp]", l, HookLayout.Positional);
            if (config.PostNorms)
            {
                Add(n.Ln2PostScale, scale, l, HookLayout.Positional);
                Add(n.Ln2PostNormalized, resid, l, HookLayout.Positional);
            }
            Add(n.MlpOut, resid, l, HookLayout.Positional);
            Add(n.ResidPost, resid, l, HookLayout.Positional);
        }
        Add("ln_final.hook_scale", scale, config.NLayers, HookLayout.Positional);
        Add("ln_final.hook_normalized", resid, config.NLayers, HookLayout.Positional);
        Add("logits", "[batch, pos, d_vocab]", config.NLayers, HookLayout.Positional);

        All = list;
        byName = list.ToDictionary(h => h.Name, StringComparer.Ordinal);
    }

    /// <summary>All hook points in forward order.</summary>
    public IReadOnlyList<HookInfo> All { get; }

    public bool TryGet(string name, out HookInfo info) => byName.TryGetValue(name, out info!);

    /// <summary>
    /// Resolves exact names and globs (<c>*</c> matches any run of characters, <c>?</c> one) to hook
    /// points in forward order. A name or glob that matches nothing is an error that says so.
    /// </summary>
    public IReadOnlyList<HookInfo> Resolve(IEnumerable<string> patterns)
    {
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var pattern in patterns)
        {
            if (string.IsNullOrWhiteSpace(pattern))
                throw new InvalidRequestException("a hook name is empty; give a TransformerLens name such as 'blocks.0.hook_resid_post' or a glob such as 'blocks.*.hook_resid_post'");
            if (!pattern.Contains('*') && !pattern.Contains('?'))
            {
                if (!byName.ContainsKey(pattern))
                    throw new InvalidRequestException($"unknown hook {InvalidRequestException.Quote(pattern)}; closest valid names: {string.Join(", ", Closest(pattern, 3).Select(n => $"'{n}'"))} (GetModelInfo / `interpmesh info` lists them all)");
                chosen.Add(pattern);
                continue;
            }
            int before = chosen.Count;
            foreach (var h in All)
            {
                if (GlobMatches(pattern, h.Name))
                    chosen.Add(h.Name);
            }
            if (chosen.Count == before && !All.Any(h => GlobMatches(pattern, h.Name)))
                throw new InvalidRequestException($"hook glob {InvalidRequestException.Quote(pattern)} matches no hook of this model; hooks look like 'blocks.0.hook_resid_post' or 'blocks.*.attn.hook_pattern'");
        }
        return All.Where(h => chosen.Contains(h.Name)).ToList();
    }

    /// <summary>The hook names nearest to <paramref name="name"/> by edit distance.</summary>
    public IEnumerable<string> Closest(string name, int count) =>
        All.Select(h => (h.Name, Distance: EditDistance(name.Length > 200 ? name[..200] : name, h.Name))).OrderBy(x => x.Distance).ThenBy(x => x.Name, StringComparer.Ordinal).Take(count).Select(x => x.Name);

    private static int EditDistance(string a, string b)
    {
        var row = Enumerable.Range(0, b.Length + 1).ToArray();
        for (int i = 1; i <= a.Length; i++)
        {
            int diagonal = row[0];
            row[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = Math.Min(Math.Min(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] == b[j - 1] ? 0 : 1));
                diagonal = above;
            }
        }
        return row[b.Length];
    }

    /// <summary>Number of elements of a hook's tensor for a batch, with <paramref name="positions"/> selected positions out of <paramref name="sequence"/>.</summary>
    public static long ElementCount(HookInfo hook, ModelConfig c, long batch, long positions, long sequence) =>
        Dimensions(hook, c, batch, positions, sequence).Aggregate(1L, (n, d) => n * d);

    /// <summary>
    /// A hook's concrete shape for a batch: its template's dimensions with <paramref name="positions"/>
    /// query positions out of <paramref name="sequence"/> (literal sizes such as hook_scale's 1 kept).
    /// </summary>
    public static long[] Dimensions(HookInfo hook, ModelConfig c, long batch, long positions, long sequence) =>
        DimensionNames(hook).Select(name => name switch
        {
            "batch" => batch,
            "pos" or "query_pos" => positions,
            "key_pos" => sequence,
            "head" => c.NHeads,
            "kv_head" => c.NKvHeads,
            "d_head" => c.DHead,
            "d_model" => c.DModel,
            "d_mlp" => c.DMlp,
            "d_vocab" => c.VocabSize,
            var literal when long.TryParse(literal, out long size) => size,
            _ => 1L,
        }).ToArray();

    /// <summary>The dimension names of a hook's shape template, in order ("batch", "pos", "d_model"; literal sizes as digits).</summary>
    public static string[] DimensionNames(HookInfo hook) =>
        [.. System.Text.RegularExpressions.Regex.Matches(hook.Shape, "[a-z_]+|[0-9]+").Select(m => m.Value)];

    internal static bool GlobMatches(string pattern, string name)
    {
        int p = 0, n = 0, star = -1, mark = 0;
        while (n < name.Length)
        {
            if (p < pattern.Length && (pattern[p] == '?' || pattern[p] == name[n])) { p++; n++; }
            else if (p < pattern.Length && pattern[p] == '*') { star = p++; mark = n; }
            else if (star >= 0) { p = star + 1; n = ++mark; }
            else return false;
        }
        while (p < pattern.Length && pattern[p] == '*') p++;
        return p == pattern.Length;
    }
}

/// <summary>The hook names of one block, built once so the forward does not format strings.</summary>
internal sealed class LayerHookNames(int layer)
{
    private static string P(int layer) => $"blocks.{layer}.";
    public readonly string ResidPre = P(layer) + "hook_resid_pre";
    public readonly string AttnIn = P(layer) + "hook_attn_in";
    public readonly string QInput = P(layer) + "hook_q_input";
    public readonly string KInput = P(layer) + "hook_k_input";
    public readonly string VInput = P(layer) + "hook_v_input";
    public readonly string Ln1Scale = P(layer) + "ln1.hook_scale";
    public readonly string Ln1Normalized = P(layer) + "ln1.hook_normalized";
    public readonly string Q = P(layer) + "attn.hook_q";
    public readonly string K = P(layer) + "attn.hook_k";
    public readonly string V = P(layer) + "attn.hook_v";
    public readonly string RotQ = P(layer) + "attn.hook_rot_q";
    public readonly string RotK = P(layer) + "attn.hook_rot_k";
    public readonly string AttnScores = P(layer) + "attn.hook_attn_scores";
    public readonly string Pattern = P(layer) + "attn.hook_pattern";
    public readonly string Z = P(layer) + "attn.hook_z";
    public readonly string Result = P(layer) + "attn.hook_result";
    public readonly string Ln1PostScale = P(layer) + "ln1_post.hook_scale";
    public readonly string Ln1PostNormalized = P(layer) + "ln1_post.hook_normalized";
    public readonly string AttnOut = P(layer) + "hook_attn_out";
    public readonly string ResidMid = P(layer) + "hook_resid_mid";
    public readonly string MlpIn = P(layer) + "hook_mlp_in";
    public readonly string Ln2Scale = P(layer) + "ln2.hook_scale";
    public readonly string Ln2Normalized = P(layer) + "ln2.hook_normalized";
    public readonly string MlpPre = P(layer) + "mlp.hook_pre";
    public readonly string MlpPreLinear = P(layer) + "mlp.hook_pre_linear";
    public readonly string MlpPost = P(layer) + "mlp.hook_post";
    public readonly string Ln2PostScale = P(layer) + "ln2_post.hook_scale";
    public readonly string Ln2PostNormalized = P(layer) + "ln2_post.hook_normalized";
    public readonly string MlpOut = P(layer) + "hook_mlp_out";
    public readonly string ResidPost = P(layer) + "hook_resid_post";
}
