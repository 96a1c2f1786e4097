using System.Globalization;

namespace InterpMesh.Plugins;

/// <summary>
/// TransformerLens hook names without string formatting in every plugin, in the spirit of
/// <c>transformer_lens.utils.get_act_name</c>: <c>HookNames.Of("resid_post", 3)</c> is
/// <c>blocks.3.hook_resid_post</c>, <c>HookNames.Of("pattern", 0)</c> is
/// <c>blocks.0.attn.hook_pattern</c>, <c>HookNames.Of("scale", 2, "ln1")</c> is
/// <c>blocks.2.ln1.hook_scale</c>, <c>HookNames.Of("embed")</c> is <c>hook_embed</c>.
/// A full name (one that contains a dot or starts with <c>hook_</c>) is returned as it is.
/// </summary>
public static class HookNames
{
    private static readonly HashSet<string> Block = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "attn_in", "mlp_in", "q_input", "k_input", "v_input"];
    private static readonly HashSet<string> Attention = ["q", "k", "v", "z", "result", "pattern", "attn_scores", "rot_q", "rot_k"];
    private static readonly HashSet<string> Mlp = ["pre", "post", "pre_linear"];
    private static readonly HashSet<string> Norm = ["scale", "normalized"];
    private static readonly HashSet<string> Norms = ["ln1", "ln2", "ln1_post", "ln2_post"];

    /// <summary>
    /// The full hook name of <paramref name="name"/> at <paramref name="layer"/>;
    /// <paramref name="norm"/> (ln1, ln2, ln1_post, ln2_post) picks the norm for <c>scale</c> and
    /// <c>normalized</c>, which without a layer are the final norm's.
    /// </summary>
    public static string Of(string name, int? layer = null, string? norm = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name.Contains('.', StringComparison.Ordinal) || name.StartsWith("hook_", StringComparison.Ordinal))
            return name;
        if (layer is < 0)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, "a layer is 0 or more");
        string L(string what) => layer is int l ? $"blocks.{l.ToString(CultureInfo.InvariantCulture)}.{what}"
            : throw new ArgumentException($"'{name}' is a per-layer hook: give its layer", nameof(layer));
        if (name is "embed" or "pos_embed")
            return layer is null ? "hook_" + name : throw new ArgumentException($"'{name}' has no layer", nameof(layer));
        if (Block.Contains(name))
            return L("hook_" + name);
        if (Attention.Contains(name))
            return L("attn.hook_" + name);
        if (Mlp.Contains(name))
            return L("mlp.hook_" + name);
        if (Norm.Contains(name))
        {
            if (layer is null)
                return norm is null or "ln_final" ? $"ln_final.hook_{name}" : throw new ArgumentException($"norm '{norm}' needs a layer", nameof(layer));
            if (norm is null || !Norms.Contains(norm))
                throw new ArgumentException($"'{name}' at a layer needs its norm: one of {string.Join(", ", Norms)}", nameof(norm));
            return L($"{norm}.hook_{name}");
        }
        throw new ArgumentException($"'{(name.Length > 40 ? name[..40] + "…" : name)}' is not a hook name TransformerLens knows (e.g. resid_post, pattern, z, pre, scale)", nameof(name));
    }

    /// <summary>The block index of a hook name (<c>blocks.7.attn.hook_z</c> → 7), or null outside the blocks.</summary>
    public static int? Layer(string? hookName)
    {
        if (hookName is null || !hookName.StartsWith("blocks.", StringComparison.Ordinal))
            return null;
        int end = hookName.IndexOf('.', 7);
        var digits = hookName.AsSpan(7, (end < 0 ? hookName.Length : end) - 7);
        return int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int layer) ? layer : null;
    }
}
