using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Forward;

/// <summary>The family fixtures (tests/fixtures/families), loaded once.</summary>
public sealed class FamilyModels : IDisposable
{
    public static readonly string[] Names = ["gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3_text"];

    private readonly Dictionary<string, LoadedModel> models = [];

    public FamilyModels()
    {
        TorchRuntime.Initialize();
        using var scope = NewDisposeScope();
        foreach (var name in Names)
            models[name] = ModelLoader.Load(RepoPaths.Fixture("families/" + name));
    }

    public Transformer this[string name] => models[name].Transformer;

    public static (int[] Ids, double[][] Logits) Golden(string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.Fixture($"families/{name}/golden-logits.json")));
        var root = doc.RootElement;
        return (root.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            root.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetDouble()).ToArray()).ToArray());
    }

    public void Dispose()
    {
        foreach (var m in models.Values)
            m.Dispose();
    }
}

/// <summary>Every supported family against float64 golden logits of an independent implementation of transformers' modeling code, and self-consistency of batching, caching and hooks.</summary>
public sealed class FamilyTests(FamilyModels models) : TorchTest, IClassFixture<FamilyModels>
{
    private const double Tolerance = 1e-4;

    public static TheoryData<string> Families => new(FamilyModels.Names);

    public static TheoryData<string, PaddingSide> FamiliesAndSides
    {
        get
        {
            var data = new TheoryData<string, PaddingSide>();
            foreach (var n in FamilyModels.Names)
            {
                data.Add(n, PaddingSide.Left);
                data.Add(n, PaddingSide.Right);
            }
            return data;
        }
    }

    private static int[] RandomIds(int seed, int length, int vocab)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => rng.Next(vocab)).ToArray();
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Logits_match_the_golden_reference_at_every_position(string family)
    {
        var (ids, expected) = FamilyModels.Golden(family);
        var logits = models[family].Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.All)!;
        var reference = tensor(expected.SelectMany(r => r).ToArray(), [expected.Length, expected[0].Length], ScalarType.Float64);
        double diff = MaxAbsDiff(logits[0], reference);
        Assert.True(diff <= Tolerance, $"{family}: max |Δlogit| = {diff:E2} > {Tolerance:E0}");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Logits_still_match_with_every_hook_captured(string family)
    {
        // Capturing everything switches on the explicit attention, the split q/k/v inputs and the
        // decomposed norms: none of them may change the result.
        var m = models[family];
        var (ids, expected) = FamilyModels.Golden(family);
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["*"])], null);
        var logits = m.Forward(Ids(ids), null, plan, (_, v) => v.Dispose(), LogitsMode.All)!;
        var reference = tensor(expected.SelectMany(r => r).ToArray(), [expected.Length, expected[0].Length], ScalarType.Float64);
        double diff = MaxAbsDiff(logits[0], reference);
        Assert.True(diff <= Tolerance, $"{family}: max |Δlogit| = {diff:E2} with all hooks");
    }

    [Theory]
    [MemberData(nameof(FamiliesAndSides))]
    public void Padded_batch_rows_equal_their_unpadded_runs(string family, PaddingSide side)
    {
        var m = models[family];
        // Lengths beyond every fixture's sliding window (12..24) and short ones, so padding meets the window.
        int[][] prompts = [RandomIds(1, 40, m.Config.VocabSize), RandomIds(2, 7, m.Config.VocabSize), RandomIds(3, 29, m.Config.VocabSize), RandomIds(4, 1, m.Config.VocabSize)];
        var (ids, mask) = TokenBatch.Pad(prompts, side);
        var batched = m.Forward(ids, mask, HookPlan.Empty, null, LogitsMode.All)!;
        int width = (int)ids.shape[1];
        for (int r = 0; r < prompts.Length; r++)
        {
            var alone = m.Forward(Ids(prompts[r]), null, HookPlan.Empty, null, LogitsMode.All)!;
            int start = side == PaddingSide.Left ? width - prompts[r].Length : 0;
            double diff = MaxAbsDiff(batched[r].narrow(0, start, prompts[r].Length), alone[0]);
            Assert.True(diff <= Tolerance, $"{family} {side}: row {r} differs from its unpadded run by {diff:E2}");
        }
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Cached_generation_equals_argmax_of_full_forwards_past_the_sliding_window(string family)
    {
        var m = models[family];
        var prompt = RandomIds(7, 10, m.Config.VocabSize);
        const int steps = 30; // 40 tokens in all: past every fixture's window
        var generated = TextGenerator.Generate(m, [prompt], new GenerationOptions(steps, new SamplingOptions()))[0];
        var sequence = prompt.ToList();
        for (int i = 0; i < steps; i++)
        {
            var logits = m.Forward(Ids([.. sequence]), null, HookPlan.Empty, null, LogitsMode.Last)!;
            int next = (int)logits[0, 0].argmax().item<long>();
            Assert.True(next == generated[i], $"{family}: step {i} (position {sequence.Count}): cache gave {generated[i]}, full forward {next}");
            sequence.Add(next);
        }
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Batched_cached_generation_gives_each_prompt_what_it_gets_alone(string family)
    {
        var m = models[family];
        int[][] prompts = [RandomIds(8, 12, m.Config.VocabSize), RandomIds(9, 3, m.Config.VocabSize)];
        var options = new GenerationOptions(28, new SamplingOptions());
        var together = TextGenerator.Generate(m, prompts, options);
        for (int r = 0; r < prompts.Length; r++)
            Assert.Equal(TextGenerator.Generate(m, [prompts[r]], options)[0], together[r]);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Bfloat16_weights_load_and_stay_close_to_float32(string family)
    {
        var (ids, _) = FamilyModels.Golden(family);
        using var bf16 = ModelLoader.Load(RepoPaths.Fixture("families/" + family), dtype: ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf16.Transformer.DType);
        var low = bf16.Transformer.Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.All)!;
        var full = models[family].Forward(Ids(ids), null, HookPlan.Empty, null, LogitsMode.All)!;
        double diff = MaxAbsDiff(low, full), scale = full.abs().max().item<float>();
        Assert.True(diff < 0.05 * scale, $"{family}: bfloat16 logits differ by {diff:E2} (logit scale {scale:F2})");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Every_hook_is_captured_with_its_documented_shape(string family)
    {
        var m = models[family];
        var c = m.Config;
        const int b = 2, t = 9;
        var ids = tensor(RandomIds(5, b * t, c.VocabSize).Select(i => (long)i).ToArray(), [b, t]);
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["*"])], null);
        var captured = new Dictionary<string, long[]>();
        m.Forward(ids, null, plan, (h, v) => { captured[h.Name] = v.shape; v.Dispose(); }, LogitsMode.All);
        Assert.Equal(m.Hooks.All.Select(h => h.Name).OrderBy(x => x, StringComparer.Ordinal), captured.Keys.OrderBy(x => x, StringComparer.Ordinal));
        foreach (var hook in m.Hooks.All)
        {
            var expected = System.Text.RegularExpressions.Regex.Matches(hook.Shape, "[a-z_0-9]+").Select(x => x.Value switch
            {
                "batch" => b,
                "pos" or "query_pos" or "key_pos" => t,
                "head" => c.NHeads,
                "kv_head" => c.NKvHeads,
                "d_head" => c.DHead,
                "d_model" => c.DModel,
                "d_mlp" => c.DMlp,
                "d_vocab" => c.VocabSize,
                var n => long.Parse(n, System.Globalization.CultureInfo.InvariantCulture),
            }).ToArray();
            Assert.True(expected.SequenceEqual(captured[hook.Name]), $"{family} {hook.Name}: documented {hook.Shape} = [{string.Join(", ", expected)}], captured [{string.Join(", ", captured[hook.Name])}]");
        }
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Zero_ablating_a_heads_z_equals_zeroing_its_output_weights(string family)
    {
        var m = models[family];
        var c = m.Config;
        var ids = Ids(RandomIds(11, 30, c.VocabSize));
        int layer = c.NLayers - 1, head = 1;
        var plan = HookPlan.Build(m.Hooks, null, [new Intervention($"blocks.{layer}.attn.hook_z", InterventionOp.ZeroAblate, Heads: [head])]);
        var ablated = m.Forward(ids, null, plan, null, LogitsMode.All)!;

        // Second path: the head's rows of W_O ([n_heads·d_head, d_model]) set to zero, no hooks.
        var columns = m.Weights.Blocks[layer].Out.narrow(0, (long)head * c.DHead, c.DHead);
        var saved = columns.clone();
        Tensor edited;
        try
        {
            columns.zero_();
            edited = m.Forward(ids, null, HookPlan.Empty, null, LogitsMode.All)!;
        }
        finally
        {
            columns.copy_(saved);
        }
        var clean = m.Forward(ids, null, HookPlan.Empty, null, LogitsMode.All)!;
        Assert.True(MaxAbsDiff(ablated, edited) <= Tolerance, $"{family}: ablation and weight edit differ by {MaxAbsDiff(ablated, edited):E2}");
        Assert.True(MaxAbsDiff(ablated, clean) > 1e-3, $"{family}: ablating head {head} changed nothing");
    }
}
