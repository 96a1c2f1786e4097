using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Generation;

/// <summary>KV-cached generation against the plain full forward at every step.</summary>
public sealed class GenerationTests(ShippedModels models) : TorchTest, IClassFixture<ShippedModels>
{
    /// <summary>Greedy continuation by re-running the whole sequence at every step (no cache).</summary>
    private static (List<int> Ids, List<Tensor> Logits) FullForwardGreedy(Transformer m, int[] prompt, int steps, HookPlan plan)
    {
        var seq = prompt.ToList();
        var ids = new List<int>();
        var logits = new List<Tensor>();
        for (int i = 0; i < steps; i++)
        {
            var l = m.Forward(Ids(seq.ToArray()), null, plan, null, LogitsMode.Last)![0, 0];
            int next = (int)l.argmax().item<long>();
            logits.Add(l);
            ids.Add(next);
            seq.Add(next);
        }
        return (ids, logits);
    }

    public static TheoryData<string> ModelNames => new() { "stories-hf", "stories-bin", "gpt2-tiny" };

    private Transformer Model(string name) => name switch
    {
        "stories-hf" => models.StoriesHf.Transformer,
        "stories-bin" => models.StoriesBin.Transformer,
        _ => models.Gpt2Tiny.Transformer,
    };

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Kv_cached_greedy_equals_step_by_step_full_forwards(string name)
    {
        var m = Model(name);
        int[] prompt = [1, 403, 407, 261, 378];
        var logits = new List<Tensor>();
        var cached = TextGenerator.Generate(m, [prompt], new GenerationOptions(20, new SamplingOptions()), onStep: null)[0];
        var (reference, referenceLogits) = FullForwardGreedy(m, prompt, 20, HookPlan.Empty);
        Assert.Equal(reference, cached);

        // Logits too: run the cache by hand and compare each step's logits.
        using var cache = m.NewCache(1, prompt.Length + 20);
        var step = m.Forward(Ids(prompt), null, HookPlan.Empty, null, LogitsMode.Last, cache)!;
        for (int i = 0; i < 20; i++)
        {
            Assert.True(MaxAbsDiff(step[0, 0], referenceLogits[i]) <= 1e-4, $"{name}: step {i} logits differ by {MaxAbsDiff(step[0, 0], referenceLogits[i]):E2}");
            step = m.Forward(Ids(reference[i]), null, HookPlan.Empty, null, LogitsMode.Last, cache)!;
        }
    }

    [Fact]
    public void Interventions_apply_at_every_generation_step()
    {
        var m = models.StoriesHf.Transformer;
        int[] prompt = [1, 403, 407];
        var plan = HookPlan.Build(m.Hooks, null, [new Intervention("blocks.2.hook_resid_post", InterventionOp.Add, full(64, 2.0f))]);
        var cached = TextGenerator.Generate(m, [prompt], new GenerationOptions(15, new SamplingOptions()), plan)[0];
        var (reference, _) = FullForwardGreedy(m, prompt, 15, plan);
        Assert.Equal(reference, cached);
        var clean = TextGenerator.Generate(m, [prompt], new GenerationOptions(15, new SamplingOptions()))[0];
        Assert.NotEqual(clean, cached);
    }

    [Fact]
    public void Batched_prompts_of_different_lengths_generate_what_each_generates_alone()
    {
        var m = models.StoriesHf.Transformer;
        int[][] prompts = [[1, 403, 407, 261, 378], [1, 20], [1, 300, 301, 302]];
        var batched = TextGenerator.Generate(m, prompts, new GenerationOptions(12, new SamplingOptions()));
        for (int i = 0; i < prompts.Length; i++)
            Assert.Equal(TextGenerator.Generate(m, [prompts[i]], new GenerationOptions(12, new SamplingOptions()))[0], batched[i]);
    }

    [Fact]
    public void Generation_stops_after_emitting_a_stop_id()
    {
        var m = models.StoriesHf.Transformer;
        int[] prompt = [1, 403, 407, 261, 378];
        var free = TextGenerator.Generate(m, [prompt], new GenerationOptions(20, new SamplingOptions()))[0];
        int stopAt = free[5];
        var stopped = TextGenerator.Generate(m, [prompt], new GenerationOptions(20, new SamplingOptions(), [stopAt]))[0];
        int first = Array.IndexOf(free, stopAt);
        Assert.Equal(free[..(first + 1)], stopped);
        Assert.Equal(stopAt, stopped[^1]);
    }

    [Fact]
    public void Sampling_is_deterministic_for_a_seed_and_top_k_1_is_greedy()
    {
        var m = models.StoriesHf.Transformer;
        int[] prompt = [1, 403];
        var s1 = TextGenerator.Generate(m, [prompt], new GenerationOptions(25, new SamplingOptions(1.0, Seed: 42)))[0];
        var s2 = TextGenerator.Generate(m, [prompt], new GenerationOptions(25, new SamplingOptions(1.0, Seed: 42)))[0];
        var s3 = TextGenerator.Generate(m, [prompt], new GenerationOptions(25, new SamplingOptions(1.0, Seed: 43)))[0];
        Assert.Equal(s1, s2);
        Assert.NotEqual(s1, s3);
        var greedy = TextGenerator.Generate(m, [prompt], new GenerationOptions(25, new SamplingOptions()))[0];
        var topK1 = TextGenerator.Generate(m, [prompt], new GenerationOptions(25, new SamplingOptions(0.7, TopK: 1, Seed: 3)))[0];
        var tinyP = TextGenerator.Generate(m, [prompt], new GenerationOptions(25, new SamplingOptions(0.7, TopP: 1e-6, Seed: 3)))[0];
        Assert.Equal(greedy, topK1);
        Assert.Equal(greedy, tinyP);
    }

    [Fact]
    public void Top_k_and_top_p_keep_only_the_allowed_tokens()
    {
        // logits over 6 tokens; probabilities ∝ exp(logit)
        var logits = tensor(new float[] { 4, 3, 2, 1, 0, -1 }).unsqueeze(0).expand(2000, 6).contiguous();
        using var gen = new TorchSharp.torch.Generator(9);
        var topK = TextGenerator.Choose(logits, new SamplingOptions(1.0, TopK: 2), gen);
        Assert.All(topK, id => Assert.InRange(id, 0, 1));
        Assert.Contains(1, topK);
        // p(0) ≈ 0.636, p(1) ≈ 0.234: top-p 0.8 keeps tokens 0 and 1 only.
        var topP = TextGenerator.Choose(logits, new SamplingOptions(1.0, TopP: 0.8), gen);
        Assert.All(topP, id => Assert.InRange(id, 0, 1));
        Assert.Contains(1, topP);
    }

    [Fact]
    public void Bad_sampling_options_fail_clearly()
    {
        var m = models.StoriesHf.Transformer;
        Assert.Contains("temperature", Assert.Throws<InvalidRequestException>(() => TextGenerator.Generate(m, [[1]], new GenerationOptions(3, new SamplingOptions(-1)))).Message);
        Assert.Contains("top-p", Assert.Throws<InvalidRequestException>(() => TextGenerator.Generate(m, [[1]], new GenerationOptions(3, new SamplingOptions(1, TopP: 0)))).Message);
        Assert.Contains("context length", Assert.Throws<InvalidRequestException>(() => TextGenerator.Generate(m, [[1]], new GenerationOptions(600, new SamplingOptions()))).Message);
    }
}
