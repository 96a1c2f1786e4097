namespace InterpMesh.Plugins.Tests;

/// <summary>The SDK's hook-name helper against TransformerLens' own names (utils.get_act_name).</summary>
public sealed class HookNamesTests
{
    [Theory]
    [InlineData("resid_pre", 0, null, "blocks.0.hook_resid_pre")]
    [InlineData("resid_mid", 3, null, "blocks.3.hook_resid_mid")]
    [InlineData("resid_post", 11, null, "blocks.11.hook_resid_post")]
    [InlineData("attn_out", 2, null, "blocks.2.hook_attn_out")]
    [InlineData("mlp_out", 2, null, "blocks.2.hook_mlp_out")]
    [InlineData("mlp_in", 1, null, "blocks.1.hook_mlp_in")]
    [InlineData("k_input", 1, null, "blocks.1.hook_k_input")]
    [InlineData("q", 4, null, "blocks.4.attn.hook_q")]
    [InlineData("z", 4, null, "blocks.4.attn.hook_z")]
    [InlineData("pattern", 0, null, "blocks.0.attn.hook_pattern")]
    [InlineData("attn_scores", 0, null, "blocks.0.attn.hook_attn_scores")]
    [InlineData("rot_k", 0, null, "blocks.0.attn.hook_rot_k")]
    [InlineData("result", 5, null, "blocks.5.attn.hook_result")]
    [InlineData("pre", 5, null, "blocks.5.mlp.hook_pre")]
    [InlineData("post", 5, null, "blocks.5.mlp.hook_post")]
    [InlineData("pre_linear", 5, null, "blocks.5.mlp.hook_pre_linear")]
    [InlineData("scale", 2, "ln1", "blocks.2.ln1.hook_scale")]
    [InlineData("normalized", 2, "ln2_post", "blocks.2.ln2_post.hook_normalized")]
    [InlineData("scale", null, null, "ln_final.hook_scale")]
    [InlineData("normalized", null, "ln_final", "ln_final.hook_normalized")]
    [InlineData("embed", null, null, "hook_embed")]
    [InlineData("pos_embed", null, null, "hook_pos_embed")]
    [InlineData("blocks.7.hook_resid_post", null, null, "blocks.7.hook_resid_post")]
    [InlineData("hook_embed", null, null, "hook_embed")]
    public void Short_names_expand_to_transformer_lens_names(string name, int? layer, string? norm, string expected)
        => Assert.Equal(expected, HookNames.Of(name, layer, norm));

    [Theory]
    [InlineData("resid_post", null, null, "per-layer hook: give its layer")]
    [InlineData("embed", 3, null, "'embed' has no layer")]
    [InlineData("scale", 3, null, "needs its norm: one of ln1, ln2, ln1_post, ln2_post")]
    [InlineData("scale", null, "ln1", "norm 'ln1' needs a layer")]
    [InlineData("resid_psot", 1, null, "'resid_psot' is not a hook name TransformerLens knows")]
    public void A_wrong_name_says_what_is_missing(string name, int? layer, string? norm, string message)
        => Assert.Contains(message, Assert.ThrowsAny<ArgumentException>(() => HookNames.Of(name, layer, norm)).Message);

    [Theory]
    [InlineData("blocks.7.attn.hook_z", 7)]
    [InlineData("blocks.12.hook_resid_post", 12)]
    [InlineData("blocks.0.ln1.hook_scale", 0)]
    [InlineData("hook_embed", null)]
    [InlineData("ln_final.hook_normalized", null)]
    [InlineData("blocks.x.hook_z", null)]
    [InlineData("blocks.-1.hook_z", null)]
    [InlineData(null, null)]
    public void The_layer_of_a_hook_name(string? hook, int? layer)
    {
        Assert.Equal(layer, HookNames.Layer(hook));
        Assert.Equal(layer, new RunOutput { Hook = hook }.Layer);
    }
}
