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

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Rows_at_different_cache_lengths_decode_as_their_own_full_forwards(string name)
    {
        // One cache, three rows filled by separate prefills of different lengths (as the engine's
        // concurrent requests are), then decode steps for all rows at once. Each row's logits must
        // equal a full forward of that row's sequence alone. Row 1 is refilled after a longer
        // occupant, so stale mask columns would show.
        var m = Model(name);
        int[][] prompts = [[1, 403, 407, 261, 378], [1, 20], [1, 300, 301]];
        using var cache = m.NewCache(3, 32);
        using (var stale = cache.Rows(1, 1))
            m.Forward(Ids(1, 5, 6, 7, 8, 9, 10, 11, 12), null, HookPlan.Empty, null, LogitsMode.Last, stale);
        var sequences = prompts.Select(p => p.ToList()).ToArray();
        var last = new Tensor[3];
        for (int r = 0; r < 3; r++)
        {
            cache.ResetRows(r, 1);
            using var row = cache.Rows(r, 1);
            last[r] = m.Forward(Ids(prompts[r]), null, HookPlan.Empty, null, LogitsMode.Last, row)![0, 0];
        }
        using var rows = cache.Rows(0, 3);
        var segments = Enumerable.Range(0, 3).Select(r => new HookSegment(r, 1, HookPlan.Empty)).ToArray();
        // A forward of 4 tokens per row that is cancelled before its first block: the rows' lengths
        // do not advance, and the columns it marked must not be seen by the next steps.
        using (var cancelled = new CancellationTokenSource())
        {
            cancelled.Cancel();
            Assert.Throws<OperationCanceledException>(() =>
                m.Forward(tensor(Enumerable.Range(3, 12).Select(x => (long)x).ToArray(), [3, 4]), null, segments, LogitsMode.Last, rows, cancelled.Token));
        }
        for (int step = 0; step < 6; step++)
        {
            var next = last.Select(l => l.argmax().item<long>()).ToArray();
            for (int r = 0; r < 3; r++)
                sequences[r].Add((int)next[r]);
            var logits = m.Forward(tensor(next, [3, 1]), null, segments, LogitsMode.Last, rows, CancellationToken.None)!;
            for (int r = 0; r < 3; r++)
            {
                var reference = m.Forward(Ids(sequences[r].ToArray()), null, HookPlan.Empty, null, LogitsMode.Last)![0, 0];
                last[r] = logits[r, 0];
                Assert.True(MaxAbsDiff(last[r], reference) <= 1e-4,
                    $"{name}: row {r} step {step} logits differ from its full forward by {MaxAbsDiff(last[r], reference):E2}");
            }
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
