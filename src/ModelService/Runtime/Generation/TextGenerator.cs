using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Generation;

/// <summary>How the next token is chosen. Temperature 0 is greedy (argmax).</summary>
/// <param name="Temperature">0 for greedy; otherwise logits are divided by it before sampling.</param>
/// <param name="TopK">Keep only the K most likely tokens (0 = no limit).</param>
/// <param name="TopP">Keep the smallest set of tokens whose probability reaches P (1 = no limit).</param>
/// <param name="Seed">Seed for sampling; the same seed gives the same tokens.</param>
public sealed record SamplingOptions(double Temperature = 0, int TopK = 0, double TopP = 1.0, long Seed = 0)
{
    public void Validate()
    {
        if (Temperature < 0 || double.IsNaN(Temperature))
            throw new InvalidRequestException($"temperature must be 0 (greedy) or positive, got {Temperature}");
        if (TopK < 0)
            throw new InvalidRequestException($"top-k must be 0 (off) or positive, got {TopK}");
        if (!(TopP > 0 && TopP <= 1))
            throw new InvalidRequestException($"top-p must be in (0, 1], got {TopP}");
    }
}

/// <summary>What to generate.</summary>
/// <param name="MaxNewTokens">Upper bound on generated tokens per prompt.</param>
/// <param name="StopIds">Generation of a row ends after it emits one of these (the stop id is the last id).</param>
public sealed record GenerationOptions(int MaxNewTokens, SamplingOptions Sampling, IReadOnlyCollection<int>? StopIds = null);

/// <summary>
/// Autoregressive generation with a KV cache. Prompts of different lengths are left-padded; the
/// hook plan (interventions and captures) applies at every step, prompt included.
/// </summary>
public static class TextGenerator
{
    /// <summary>Generates for each prompt; returns the new ids per prompt.</summary>
    /// <param name="onStep">Called after each step with the step index and the id chosen per row
    /// (-1 for rows that had already stopped), e.g. to stream tokens out.</param>
    public static int[][] Generate(
        Transformer model,
        IReadOnlyList<IReadOnlyList<int>> prompts,
        GenerationOptions options,
        HookPlan? plan = null,
        CaptureSink? sink = null,
        Action<int, int[]>? onStep = null,
        CancellationToken cancellationToken = default)
    {
        options.Sampling.Validate();
        if (options.MaxNewTokens < 0)
            throw new InvalidRequestException($"max new tokens must be non-negative, got {options.MaxNewTokens}");
        plan ??= HookPlan.Empty;
        int b = prompts.Count;
        var generated = Enumerable.Range(0, b).Select(_ => new List<int>()).ToArray();
        if (options.MaxNewTokens == 0)
            return generated.Select(g => g.ToArray()).ToArray();

        var (ids, mask) = TokenBatch.Pad(prompts, PaddingSide.Left, model.Device);
        int promptLength = (int)ids.shape[1];
        int capacity = promptLength + options.MaxNewTokens;
        if (capacity > model.Config.ContextLength)
            throw new InvalidRequestException($"prompt ({promptLength} tokens) plus max new tokens ({options.MaxNewTokens}) exceed the model's context length of {model.Config.ContextLength}");

        using var cache = model.NewCache(b, capacity);
        using var generator = options.Sampling.Temperature > 0 ? new torch.Generator((ulong)options.Sampling.Seed, model.Device) : null;
        var stop = options.StopIds is null ? new HashSet<int>() : new HashSet<int>(options.StopIds);
        var finished = new bool[b];

        Tensor input = ids;
        Tensor? inputMask = mask;
        for (int step = 0; step < options.MaxNewTokens; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int[] next;
            using (var scope = NewDisposeScope())
            {
                var logits = model.Forward(input, inputMask, plan, sink, LogitsMode.Last, cache)!;
                next = Choose(logits[.., 0, ..], options.Sampling, generator);
            }
            var emitted = new int[b];
            for (int r = 0; r < b; r++)
            {
                if (finished[r])
                {
                    emitted[r] = -1;
                    continue;
                }
                emitted[r] = next[r];
                generated[r].Add(next[r]);
                if (stop.Contains(next[r]))
                    finished[r] = true;
            }
            onStep?.Invoke(step, emitted);
            if (finished.All(f => f) || step == options.MaxNewTokens - 1)
                break;
            input.Dispose();
            inputMask?.Dispose();
            input = tensor(next.Select(x => (long)x).ToArray(), [b, 1], device: model.Device);
            inputMask = null;
        }
        input.Dispose();
        inputMask?.Dispose();
        return generated.Select(g => g.ToArray()).ToArray();
    }

    /// <summary>Chooses one id per row from <c>[batch, vocab]</c> logits.</summary>
    public static int[] Choose(Tensor logits, SamplingOptions s, torch.Generator? generator)
    {
        using var scope = NewDisposeScope();
        var x = logits.to(ScalarType.Float32);
        Tensor chosen;
        if (s.Temperature == 0)
        {
            chosen = x.argmax(-1);
        }
        else
        {
            x = Scalars.DivValue(x, s.Temperature);
            if (s.TopK > 0 && s.TopK < x.shape[^1])
            {
                var kth = x.topk(s.TopK, -1).values[.., ^1..];
                x = x.masked_fill(x.lt(kth), Scalars.NegativeInfinity);
            }
            if (s.TopP < 1.0)
            {
                var (sorted, order) = x.sort(-1, descending: true);
                var probs = sorted.softmax(-1);
                var before = probs.cumsum(-1) - probs;
                using Scalar topP = s.TopP;
                var dropSorted = before.ge(topP); // keep tokens until the mass before them reaches P
                var drop = zeros_like(dropSorted).scatter(-1, order, dropSorted);
                x = x.masked_fill(drop, Scalars.NegativeInfinity);
            }
            chosen = x.softmax(-1).multinomial(1, false, generator).squeeze(-1);
        }
        return chosen.to(ScalarType.Int64).data<long>().Select(v => (int)v).ToArray();
    }
}
