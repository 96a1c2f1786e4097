using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Forward;

/// <summary>The runtime against outputs of independent reference implementations.</summary>
public sealed class GoldenTests(ShippedModels models) : TorchTest, IClassFixture<ShippedModels>
{
    private const double LogitTolerance = 1e-4;

    public static TheoryData<string> StoriesFormats => new() { "llama2.c", "hf" };

    private LoadedModel Stories(string format) => format == "hf" ? models.StoriesHf : models.StoriesBin;

    [Theory]
    [MemberData(nameof(StoriesFormats))]
    public void Stories260K_greedy_ids_match_llama2c_run_c(string format)
    {
        var golden = Golden.Stories260K();
        // run.c: 60 steps count prompt positions too; it stops early when BOS (1) is produced.
        int maxNew = 60 - golden.PromptIds.Length;
        var generated = TextGenerator.Generate(Stories(format).Transformer, [golden.PromptIds], new GenerationOptions(maxNew, new SamplingOptions(), [1]))[0];
        Assert.Equal(golden.GeneratedIds, generated);
    }

    [Theory]
    [MemberData(nameof(StoriesFormats))]
    public void Stories260K_logits_match_llama2c_run_c_at_recorded_positions(string format)
    {
        var golden = Golden.Stories260K();
        var logits = Stories(format).Transformer.Forward(Ids(golden.PromptIds), null, HookPlan.Empty, null, LogitsMode.All)!;
        for (int p = 0; p < golden.FirstLogits.Length; p++)
        {
            var expected = tensor(golden.FirstLogits[p]);
            double diff = MaxAbsDiff(logits[0, p], expected);
            Assert.True(diff <= LogitTolerance, $"{format}: position {p} max |Δlogit| = {diff:E2} > {LogitTolerance:E0}");
        }
    }

    [Fact]
    public void Stories260K_llama2c_and_hf_layouts_agree_on_other_prompts()
    {
        int[][] prompts = [[1, 20, 300, 45, 511, 7, 99], [1], [1, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270]];
        foreach (var p in prompts)
        {
            var a = models.StoriesBin.Transformer.Forward(Ids(p), null, HookPlan.Empty, null, LogitsMode.All)!;
            var b = models.StoriesHf.Transformer.Forward(Ids(p), null, HookPlan.Empty, null, LogitsMode.All)!;
            Assert.True(MaxAbsDiff(a, b) <= LogitTolerance, $"prompt of {p.Length} tokens: layouts differ by {MaxAbsDiff(a, b):E2}");
        }
    }

    [Fact]
    public void Gpt2Tiny_logits_match_float64_reference()
    {
        var (ids, expected) = Golden.Gpt2Tiny();
        var logits = models.Gpt2Tiny.Transformer.Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.All)!;
        var reference = tensor(expected.SelectMany(r => r).ToArray(), [expected.Length, expected[0].Length], ScalarType.Float64);
        double diff = MaxAbsDiff(logits[0], reference);
        Assert.True(diff <= LogitTolerance, $"max |Δlogit| = {diff:E2} > {LogitTolerance:E0}");
    }

    [Fact]
    public void Last_logits_equal_the_last_row_of_all_logits()
    {
        var (ids, _) = Golden.Gpt2Tiny();
        var all = models.Gpt2Tiny.Transformer.Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.All)!;
        var last = models.Gpt2Tiny.Transformer.Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.Last)!;
        Assert.Equal([1, 1, 512], last.shape);
        Assert.True(MaxAbsDiff(all[0, ^1], last[0, 0]) <= 1e-5, $"differ by {MaxAbsDiff(all[0, ^1], last[0, 0]):E2}");
    }
}
