using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Execution;

/// <summary>
/// The whole forward and generation loop under forced collections. Every scalar they pass to
/// TorchSharp must outlive the native call reading it (<see cref="InterpMesh.Runtime.Execution.Scalars"/>;
/// docs/torchsharp-on-debian.md, "Implicit scalars"): with a thread collecting and running
/// finalizers all the time, an implicit scalar on any path exercised here fails ("Expected false to
/// be true" from Scalar::toFloat) or changes an output. The workload covers a padded batch with
/// hooked LayerNorm, explicit attention scores and patterns, captures at the last position and
/// interventions (GPT-2 shape), and sampled generation with top-k / top-p, RMSNorm, rotary
/// embeddings and grouped-query attention (Llama shape); each iteration must match a run made
/// without collections exactly.
/// </summary>
public sealed class ForwardUnderCollectionsTests : TorchTest
{
    private const int Iterations = 150;

    private static readonly Lazy<(Transformer Gpt2, Transformer Llama)> Models = new(() =>
        (Presets.CreateRandom(Presets.Config("gpt2-tiny"), seed: 11), Presets.CreateRandom(Presets.Config("llama-tiny"), seed: 12)));

    /// <summary>One iteration's outputs, flattened: logits, captures and generated ids.</summary>
    private static List<float> Workload()
    {
        using var scope = NewDisposeScope();
        var (gpt2, llama) = Models.Value;
        var outputs = new List<float>();

        // A padded batch of two rows (left padding), hooked norms, patterns and interventions.
        var tokens = tensor(new long[] { 0, 0, 5, 17, 3, 9, 42, 7, 8, 100, 101, 102 }, [2, 6]);
        var mask = tensor(new[] { false, false, true, true, true, true, true, true, true, true, true, true }, [2, 6]);
        var shift = tensor(Enumerable.Repeat(0.25f, gpt2.Config.DModel).ToArray());
        var plan = HookPlan.Build(gpt2.Hooks,
            [
                new CaptureRequest(["ln_final.hook_scale", "blocks.0.ln1.hook_normalized"], PositionSelection.Last),
                new CaptureRequest(["blocks.1.attn.hook_pattern"]),
            ],
            [
                new Intervention("blocks.0.hook_resid_mid", InterventionOp.Add, shift),
                new Intervention("blocks.1.hook_mlp_out", InterventionOp.Scale, Scale: 0.5, Positions: [4, 5]),
                new Intervention("blocks.1.attn.hook_z", InterventionOp.ZeroAblate, Heads: [1]),
            ]);
        var captures = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        var logits = gpt2.Forward(tokens, mask, plan, (h, t) => captures[h.Name] = t, LogitsMode.All)!;
        outputs.AddRange(logits.data<float>());
        foreach (var c in captures.Values)
            outputs.AddRange(c.contiguous().data<float>());

        // Sampled generation on a rotary, grouped-query model with prompts of different lengths.
        var sampling = new SamplingOptions(Temperature: 0.8, TopK: 50, TopP: 0.9, Seed: 3);
        var generated = TextGenerator.Generate(llama, [[1, 20, 30, 40, 50], [1, 7]], new GenerationOptions(32, sampling));
        outputs.AddRange(generated.SelectMany(g => g).Select(id => (float)id));
        // Greedy generation on the GPT-2 shape (learned positions, biases).
        var greedy = TextGenerator.Generate(gpt2, [[3, 4, 5], [9, 8, 7, 6]], new GenerationOptions(48, new SamplingOptions()));
        outputs.AddRange(greedy.SelectMany(g => g).Select(id => (float)id));
        return outputs;
    }

    [Fact]
    public void Forwards_and_generations_under_forced_collections_equal_a_run_without_them()
    {
        var expected = Workload();
        Assert.True(expected.Count > 1000, $"the workload produced only {expected.Count} values");
        int iterations = 0;
        Exception? failure = null;
        bool stop = false;
        var collector = new Thread(() =>
        {
            // Generations 0 and 1 only: an implicit scalar lives no longer than the native call that
            // reads it, so it is young when it is wrongly collected. A full collection here scales with
            // everything other test classes running meanwhile keep alive (their loaded models, cached
            // arrays), and in the whole suite it slowed this test from ~20 s to over 10 minutes.
            while (!Volatile.Read(ref stop))
            {
                GC.Collect(1, GCCollectionMode.Forced, blocking: true);
                GC.WaitForPendingFinalizers();
            }
        });
        collector.Start();
        try
        {
            for (; iterations < Iterations; iterations++)
            {
                var actual = Workload();
                if (!actual.SequenceEqual(expected))
                {
                    int at = Enumerable.Range(0, Math.Min(actual.Count, expected.Count)).FirstOrDefault(i => actual[i] != expected[i]);
                    Assert.Fail($"iteration {iterations}: output {at} of {expected.Count} is {actual.ElementAtOrDefault(at)}, expected {expected[at]}");
                }
            }
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            failure = e;
        }
        finally
        {
            Volatile.Write(ref stop, true);
            collector.Join();
        }
        Assert.True(failure is null, $"iteration {iterations} failed: {failure}");
        Assert.Equal(Iterations, iterations);
    }
}
