using InterpMesh.Runtime;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Engine.Requests;

/// <summary>A Run that passed validation: token rows, the hook plan, and what to do with the outputs.</summary>
internal sealed class ValidatedRun
{
    public required int[][] Rows { get; init; }
    public required HookPlan Plan { get; init; }
    public required Dictionary<string, CaptureReduction> Reductions { get; init; }
    public required LogitsMode Logits { get; init; }
    public required int TopK { get; init; }
    public required bool Loss { get; init; }
    public required PaddingSide Padding { get; init; }
    public required List<Tensor> Owned { get; init; }
    public int PaddedLength => Rows.Max(r => r.Length);
    /// <summary>Runs with equal keys can share a forward without changing what either receives.</summary>
    public string Key => $"{PaddedLength}:{Padding}:{Logits}:{Loss}";
}

/// <summary>A Generate that passed validation.</summary>
internal sealed class ValidatedGenerate
{
    public required int[][] Prompts { get; init; }
    public required HookPlan Plan { get; init; }
    public required Dictionary<string, CaptureReduction> Reductions { get; init; }
    public required int MaxNewTokens { get; init; }
    public required SamplingOptions Sampling { get; init; }
    public required HashSet<int> StopIds { get; init; }
    public required List<Tensor> Owned { get; init; }
    public int PromptLength => Prompts.Max(p => p.Length);
}

/// <summary>
/// Checks a spec once, before admission, against the model and the engine's limits. Errors are
/// <see cref="InvalidRequestException"/> (or <see cref="RequestLimitException"/> for limits) and say
/// which field is wrong and how to fix it, quoting at most a short piece of the input.
/// </summary>
internal static class RequestValidator
{
    public static ValidatedRun Run(LoadedModel model, EngineOptions options, RunSpec spec)
    {
        var rows = Rows(model, spec.Inputs, "inputs", options.MaxBatch);
        if (spec.TopK < 0)
            throw new InvalidRequestException($"logits.top_k must be 0 (full rows) or positive, got {spec.TopK}");
        int length = rows.Max(r => r.Length);
        var owned = new List<Tensor>();
        try
        {
            var (plan, reductions) = Plan(model, options, spec.Captures, spec.Interventions, rows.Length, length, length, generate: false, owned);
            return new ValidatedRun
            {
                Rows = rows, Plan = plan, Reductions = reductions, Logits = spec.Logits, TopK = spec.TopK,
                Loss = spec.Loss, Padding = spec.Padding, Owned = owned,
            };
        }
        catch
        {
            owned.ForEach(t => t.Dispose());
            throw;
        }
    }

    public static ValidatedGenerate Generate(LoadedModel model, EngineOptions options, GenerateSpec spec)
    {
        var prompts = Rows(model, spec.Prompts, "prompts", options.MaxBatch);
        if (spec.MaxNewTokens < 1)
            throw new InvalidRequestException($"max_new_tokens must be at least 1, got {spec.MaxNewTokens}");
        int length = prompts.Max(p => p.Length);
        long total = (long)length + spec.MaxNewTokens;
        if (total > model.Config.ContextLength)
            throw new InvalidRequestException($"the prompt ({length} tokens) plus max_new_tokens ({spec.MaxNewTokens}) exceed the model's context length of {model.Config.ContextLength}; lower max_new_tokens to at most {Math.Max(0, model.Config.ContextLength - length)}");
        var s = spec.Sampling;
        if (!double.IsFinite(s.Temperature) || s.Temperature < 0)
            throw new InvalidRequestException($"sampling.temperature must be 0 (greedy) or a positive finite number, got {s.Temperature}");
        if (s.TopK < 0)
            throw new InvalidRequestException($"sampling.top_k must be 0 (off) or positive, got {s.TopK}");
        if (double.IsNaN(s.TopP) || s.TopP <= 0 || s.TopP > 1)
            throw new InvalidRequestException($"sampling.top_p must be in (0, 1] (1 = off), got {s.TopP}");
        int vocab = model.Config.VocabSize;
        HashSet<int> stops;
        if (spec.StopIds is null)
        {
            // The tokenizer's EOS and every eos_token_id of the config (a list for e.g. Llama 3 instruct).
            stops = [.. model.Config.EosTokenIds];
            if (model.Tokenizer?.EosId is int eos)
                stops.Add(eos);
        }
        else
        {
            stops = [];
            for (int i = 0; i < spec.StopIds.Count; i++)
            {
                int id = spec.StopIds[i];
                if (id < 0 || id >= vocab)
                    throw new InvalidRequestException($"stop_token_ids[{i}] = {id} is outside the vocabulary (0..{vocab - 1})");
                stops.Add(id);
            }
        }
        foreach (var c in spec.Captures)
        {
            if (c.Positions.Kind == PositionKind.Indices)
                throw new InvalidRequestException("Generate captures take all or last positions (each step covers the new token); capture explicit indices with Run");
        }
        var owned = new List<Tensor>();
        try
        {
            var (plan, reductions) = Plan(model, options, spec.Captures, spec.Interventions, prompts.Length, length, (int)total, generate: true, owned);
            return new ValidatedGenerate
            {
                Prompts = prompts, Plan = plan, Reductions = reductions, MaxNewTokens = spec.MaxNewTokens,
                Sampling = s, StopIds = stops, Owned = owned,
            };
        }
        catch
        {
            owned.ForEach(t => t.Dispose());
            throw;
        }
    }

    private static int[][] Rows(LoadedModel model, IReadOnlyList<InputSpec> inputs, string field, int maxBatch)
    {
        if (inputs.Count == 0)
            throw new InvalidRequestException($"{field} is empty; send at least one");
        if (inputs.Count > maxBatch)
            throw new RequestLimitException($"{inputs.Count} {field} exceed this server's batch limit of {maxBatch}; split the request");
        var rows = new int[inputs.Count][];
        for (int i = 0; i < inputs.Count; i++)
        {
            var input = inputs[i];
            int[] ids;
            if (input.Text is { } text)
            {
                var tokenizer = model.Tokenizer ?? throw new InvalidRequestException(
                    $"{field}[{i}] is text, but this model has no tokenizer; send token ids instead");
                ids = tokenizer.Encode(text);
            }
            else if (input.Ids is { } given)
            {
                ids = [.. given];
            }
            else
            {
                throw new InvalidRequestException($"{field}[{i}] is empty: set text or tokens");
            }
            if (ids.Length == 0)
                throw new InvalidRequestException($"{field}[{i}] has no tokens");
            if (ids.Length > model.Config.ContextLength)
                throw new InvalidRequestException($"{field}[{i}] has {ids.Length} tokens, more than the model's context length of {model.Config.ContextLength}");
            foreach (var id in ids)
            {
                if (id < 0 || id >= model.Config.VocabSize)
                    throw new InvalidRequestException($"{field}[{i}] has token id {id}, outside the vocabulary (0..{model.Config.VocabSize - 1})");
            }
            rows[i] = ids;
        }
        return rows;
    }

    /// <summary>
    /// Resolves captures and interventions once into the request's plan, checking the capture budget,
    /// heads, positions and that each value broadcasts to its hooks. <paramref name="positions"/> is
    /// the padded length a Run's positions index (for Generate: prompt plus new tokens).
    /// </summary>
    private static (HookPlan, Dictionary<string, CaptureReduction>) Plan(
        LoadedModel model, EngineOptions options, IReadOnlyList<CaptureSpec> captures, IReadOnlyList<Intervention> interventions,
        int batch, int length, int positions, bool generate, List<Tensor> owned)
    {
        var catalogue = model.Transformer.Hooks;
        var config = model.Config;
        var reductions = new Dictionary<string, CaptureReduction>(StringComparer.Ordinal);
        var requests = new List<CaptureRequest>();
        long budget = 0;
        for (int i = 0; i < captures.Count; i++)
        {
            var c = captures[i];
            if (c.DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
                throw new InvalidRequestException($"captures[{i}]: dtype must be FLOAT32, BFLOAT16 or FLOAT16");
            if (c.Positions.Kind == PositionKind.Indices)
            {
                foreach (var p in c.Positions.Indices!)
                {
                    if (p >= length || p < -length)
                        throw new InvalidRequestException($"captures[{i}]: position {p} is outside the sequence of {length} positions (negative indices count from the end)");
                }
            }
            long selected = c.Positions.Kind switch { PositionKind.Last => 1, PositionKind.Indices => c.Positions.Indices!.Count, _ => length };
            foreach (var hook in catalogue.Resolve(c.Hooks))
            {
                reductions[hook.Name] = c.Reduction;
                long elements = HookCatalogue.ElementCount(hook, config, batch, c.Reduction == CaptureReduction.Mean ? 1 : selected, length);
                budget += elements * (c.DType == ScalarType.Float32 ? 4 : 2);
            }
            requests.Add(new CaptureRequest(c.Hooks, c.Positions, c.DType));
        }
        if (budget > options.MaxCaptureBytes)
            throw new RequestLimitException(
                $"the requested captures need {budget:N0} bytes, over this server's per-request budget of {options.MaxCaptureBytes:N0}; capture fewer hooks, fewer positions (last or indices), a smaller batch, or bfloat16");

        var copies = new List<Intervention>();
        for (int i = 0; i < interventions.Count; i++)
        {
            var iv = interventions[i];
            var hooks = catalogue.Resolve([iv.Hook]);
            if (iv.Op == InterventionOp.Scale && !double.IsFinite(iv.Scale))
                throw new InvalidRequestException($"interventions[{i}]: scale must be finite");
            if (iv.Op is InterventionOp.Add or InterventionOp.Set or InterventionOp.MeanAblate && iv.Value is null)
                throw new InvalidRequestException($"interventions[{i}] ({iv.Op} on {InvalidRequestException.Quote(iv.Hook)}) needs a value tensor");
            if (iv.Positions is { } ps)
            {
                foreach (var p in ps)
                {
                    if (p < 0)
                        throw new InvalidRequestException($"interventions[{i}]: position {p} is negative; positions are absolute indices into the (padded) sequence");
                    if (p >= positions)
                        throw new InvalidRequestException(generate
                            ? $"interventions[{i}]: position {p} is beyond the generation (prompt of {length} positions plus max_new_tokens: {positions} in all)"
                            : $"interventions[{i}]: position {p} is outside every row's sequence (the padded length is {length})");
                }
            }
            if (iv.Rows is { } rs)
            {
                foreach (var r in rs)
                {
                    if (r < 0 || r >= batch)
                        throw new InvalidRequestException($"interventions[{i}]: row {r} is outside the request's batch of {batch} rows (rows index the request's inputs, from 0)");
                }
            }
            foreach (var hook in hooks)
            {
                if (iv.Heads is { } heads)
                {
                    if (hook.Layout == HookLayout.Positional)
                        throw new InvalidRequestException($"interventions[{i}] on '{hook.Name}' names heads, but that hook has no head dimension; per-head hooks are attn.hook_q/k/v/z/result/pattern/attn_scores");
                    int n = hook.Shape.Contains("kv_head", StringComparison.Ordinal) ? config.NKvHeads : config.NHeads;
                    foreach (var h in heads)
                    {
                        if (h < 0 || h >= n)
                            throw new InvalidRequestException($"interventions[{i}]: head {h} is out of range for '{hook.Name}', which has {n} heads");
                    }
                }
                if (iv.Value is { } value)
                {
                    CheckBroadcast(i, hook, config, value.shape, batch, length, length);
                    if (generate)
                        CheckBroadcast(i, hook, config, value.shape, batch, 1, positions);
                }
            }
            Tensor? copy = null;
            if (iv.Value is { } v)
            {
                copy = v.detach().to(ScalarType.Float32).clone();
                copy.DetachFromDisposeScope();
                owned.Add(copy);
                if (!copy.isfinite().all().item<bool>())
                    throw new InvalidRequestException($"interventions[{i}].value contains NaN or infinite values");
            }
            copies.Add(iv with { Value = copy });
        }
        var plan = HookPlan.Build(catalogue, requests, copies);
        return (plan, reductions);
    }

    /// <summary>Refuses a value that does not broadcast to the hook's tensor for this batch.</summary>
    private static void CheckBroadcast(int index, HookInfo hook, ModelConfig c, long[] value, int batch, int queries, int keys)
    {
        var dims = HookCatalogue.Dimensions(hook, c, batch, queries, keys);
        if (!Intervention.BroadcastsTo(value, dims))
            throw new InvalidRequestException($"interventions[{index}]: a value of shape [{string.Join(", ", value)}] does not broadcast to '{hook.Name}' of shape [{string.Join(", ", dims)}] ({hook.Shape})");
    }
}
