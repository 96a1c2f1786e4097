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
    /// <summary>The gradient to take (null: a plain inference Run).</summary>
    public ValidatedGradient? Gradient { get; init; }
    public int PaddedLength => Rows.Max(r => r.Length);
    /// <summary>Runs with equal keys can share a forward without changing what either receives (a gradient Run's key is its own).</summary>
    public string Key => Gradient?.Key ?? $"{PaddedLength}:{Padding}:{Logits}:{Loss}";
}

/// <summary>A gradient request resolved against the batch: per-row targets and the hooks it differentiates at.</summary>
internal sealed class ValidatedGradient
{
    public required GradientMetric Metric { get; init; }
    /// <summary>Logit / LogProb: the target token of each row.</summary>
    public int[] Tokens { get; init; } = [];
    /// <summary>Logit / LogProb: the absolute position (non-negative), or null for each row's last real token.</summary>
    public int? Position { get; init; }
    /// <summary>LogitDifference: each row's sets.</summary>
    public int[][] Correct { get; init; } = [];
    public int[][] Incorrect { get; init; } = [];
    public required PositionSelection Positions { get; init; }
    public required ScalarType DType { get; init; }
    /// <summary>The estimated autograd memory (bytes).</summary>
    public long EstimatedBytes { get; init; }
    /// <summary>Never shared: a gradient Run runs in a forward of its own.</summary>
    public string Key { get; } = "gradient:" + Guid.NewGuid().ToString("N");
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
        ValidatedGradient? gradient = null;
        IReadOnlyList<HookInfo> gradientHooks = [];
        long gradientBytes = 0;
        if (spec.Gradient is { } g)
            (gradient, gradientHooks, gradientBytes) = Gradient(model, options, g, rows, length);
        var owned = new List<Tensor>();
        try
        {
            var (plan, reductions) = Plan(model, options, spec.Captures, spec.Interventions, rows.Length, length, length, generate: false, owned,
                gradientHooks.Select(h => h.Name).ToList(), gradientBytes);
            return new ValidatedRun
            {
                Rows = rows, Plan = plan, Reductions = reductions, Logits = spec.Logits, TopK = spec.TopK,
                Loss = spec.Loss, Padding = spec.Padding, Owned = owned, Gradient = gradient,
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
        int batch, int length, int positions, bool generate, List<Tensor> owned,
        IReadOnlyList<string>? gradientHooks = null, long gradientBytes = 0)
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
        if (budget + gradientBytes > options.MaxCaptureBytes)
        {
            throw new RequestLimitException(gradientBytes == 0
                ? $"the requested captures need {budget:N0} bytes, over this server's per-request budget of {options.MaxCaptureBytes:N0}; capture fewer hooks, fewer positions (last or indices), a smaller batch, or bfloat16"
                : $"the requested captures ({budget:N0} bytes) and gradients ({gradientBytes:N0} bytes) need {budget + gradientBytes:N0} bytes, over this server's per-request budget of {options.MaxCaptureBytes:N0}; ask for fewer hooks, fewer positions (last or indices), a smaller batch, or bfloat16");
        }

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
        var plan = HookPlan.Build(catalogue, requests, copies, gradientHooks);
        return (plan, reductions);
    }

    /// <summary>
    /// Checks a gradient request against the model, the batch and the server's limits: the metric and
    /// its tokens and positions, the hooks, the dtype, whether this server can differentiate at all,
    /// and the estimated autograd memory. Returns the resolved request, its hooks and its output bytes.
    /// </summary>
    private static (ValidatedGradient, IReadOnlyList<HookInfo>, long) Gradient(LoadedModel model, EngineOptions options, GradientSpec g, int[][] rows, int length)
    {
        var config = model.Config;
        int batch = rows.Length, vocab = config.VocabSize;
        if (g.Metric == GradientMetric.Unset)
            throw new InvalidRequestException("gradient: no metric is set; choose loss, logit, log_prob or logit_difference");
        if (options.GradientMemoryBytes <= 0)
            throw new InvalidRequestException("gradient: gradients are disabled on this server (ModelService:GradientMemoryBytes is 0); send the request without gradient, or to a server with a gradient budget");
        var weightType = model.Transformer.DType;
        if (weightType is not (ScalarType.Float32 or ScalarType.Float64))
            throw new InvalidRequestException($"gradient: this server holds the model in {DTypeNames.Name(weightType)}, which it does not differentiate; send gradient requests to a float32 replica (ModelService:DType float32)");
        if (g.Hooks.Count == 0)
            throw new InvalidRequestException("gradient.hooks is empty; name at least one hook or glob, e.g. 'blocks.0.hook_resid_post'");
        IReadOnlyList<HookInfo> hooks;
        try
        {
            hooks = model.Transformer.Hooks.Resolve(g.Hooks);
        }
        catch (InvalidRequestException e)
        {
            throw new InvalidRequestException($"gradient.hooks: {e.Message}");
        }
        if (g.DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new InvalidRequestException("gradient.dtype must be FLOAT32, BFLOAT16 or FLOAT16");
        if (g.Positions.Kind == PositionKind.Indices)
        {
            foreach (var p in g.Positions.Indices!)
            {
                if (p >= length || p < -length)
                    throw new InvalidRequestException($"gradient.positions: position {p} is outside the sequence of {length} positions (negative indices count from the end)");
            }
        }

        int[] tokens = [];
        int? position = null;
        int[][] correct = [], incorrect = [];
        switch (g.Metric)
        {
            case GradientMetric.Loss:
                for (int i = 0; i < batch; i++)
                {
                    if (rows[i].Length < 2)
                        throw new InvalidRequestException($"gradient.loss needs at least two tokens in every row (a next-token target); inputs[{i}] has {rows[i].Length}");
                }
                break;
            case GradientMetric.Logit:
            case GradientMetric.LogProb:
                {
                    string field = g.Metric == GradientMetric.Logit ? "gradient.logit" : "gradient.log_prob";
                    tokens = PerRow(g.Tokens, batch, vocab, $"{field}.tokens", "tokens");
                    if (g.Position is int p)
                    {
                        if (p >= length)
                            throw new InvalidRequestException($"{field}.position: position {p} is past the sequence of {length} positions");
                        if (p < -length)
                            throw new InvalidRequestException($"{field}.position: position {p} is before the start of the sequence of {length} positions (negative positions count from the end)");
                        position = p < 0 ? length + p : p;
                    }
                    break;
                }
            case GradientMetric.LogitDifference:
                correct = Sets(g.Correct, batch, vocab, "gradient.logit_difference.correct");
                incorrect = Sets(g.Incorrect, batch, vocab, "gradient.logit_difference.incorrect");
                break;
        }

        long selected = g.Positions.Kind switch { PositionKind.Last => 1, PositionKind.Indices => g.Positions.Indices!.Count, _ => length };
        long outputBytes = hooks.Sum(h => HookCatalogue.ElementCount(h, config, batch, selected, length)) * (g.DType == ScalarType.Float32 ? 4 : 2);
        long estimate = GradientMemory(config, batch, length, weightType == ScalarType.Float64 ? 8 : 4);
        if (estimate > options.GradientMemoryBytes)
        {
            throw new RequestLimitException(
                $"the gradient needs an estimated {estimate:N0} bytes of autograd memory ({batch} rows × {length} positions × {config.NLayers} layers, attention maps included), " +
                $"over this server's gradient budget of {options.GradientMemoryBytes:N0} bytes; send fewer rows or shorter inputs (the estimate grows with rows × positions, and with positions² for attention)");
        }
        var validated = new ValidatedGradient
        {
            Metric = g.Metric, Tokens = tokens, Position = position, Correct = correct, Incorrect = incorrect,
            Positions = g.Positions, DType = g.DType, EstimatedBytes = estimate,
        };
        return (validated, hooks, outputBytes);
    }

    /// <summary>One token per row from a list of one (shared) or one per row, each in the vocabulary.</summary>
    private static int[] PerRow(IReadOnlyList<int> tokens, int batch, int vocab, string field, string what)
    {
        if (tokens.Count == 0)
            throw new InvalidRequestException($"{field} is empty; give one token per row ({batch}) or one for every row");
        if (tokens.Count != 1 && tokens.Count != batch)
            throw new InvalidRequestException($"{field} has {tokens.Count} {what} for a batch of {batch} rows; give one per row or one for every row");
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i] < 0 || tokens[i] >= vocab)
                throw new InvalidRequestException($"{field}[{i}] = {tokens[i]} is outside the vocabulary (0..{vocab - 1})");
        }
        return tokens.Count == batch ? [.. tokens] : Enumerable.Repeat(tokens[0], batch).ToArray();
    }

    /// <summary>One non-empty token set per row, from one set (shared) or one per row.</summary>
    private static int[][] Sets(IReadOnlyList<IReadOnlyList<int>> sets, int batch, int vocab, string field)
    {
        if (sets.Count == 0)
            throw new InvalidRequestException($"{field} is empty; give one token set per row ({batch}) or one for every row");
        if (sets.Count != 1 && sets.Count != batch)
            throw new InvalidRequestException($"{field} has {sets.Count} sets for a batch of {batch} rows; give one per row or one for every row");
        for (int i = 0; i < sets.Count; i++)
        {
            if (sets[i].Count == 0)
                throw new InvalidRequestException($"{field}[{i}] has no ids; each set needs at least one token id");
            foreach (var id in sets[i])
            {
                if (id < 0 || id >= vocab)
                    throw new InvalidRequestException($"{field}[{i}] has id {id}, outside the vocabulary (0..{vocab - 1})");
            }
        }
        return Enumerable.Range(0, batch).Select(r => sets[sets.Count == batch ? r : 0].ToArray()).ToArray();
    }

    /// <summary>
    /// The activations a forward keeps for its backward pass, in bytes: per row, position and layer
    /// the residual-width tensors (norm inputs and outputs, attention and MLP outputs), q/k/v and z,
    /// the MLP's hidden activations (gated MLPs keep three), the attention scores and pattern
    /// (heads × positions per query position), then the final norm and the logits with their
    /// softmax. An estimate within a small factor of what autograd holds, not an exact count.
    /// </summary>
    internal static long GradientMemory(ModelConfig c, long batch, long length, long elementSize)
    {
        long perLayer = 10L * c.DModel + 2L * c.NHeads * c.DHead + 2L * 2 * c.NKvHeads * c.DHead
            + (c.GatedMlp ? 4L : 3L) * c.DMlp + 2L * c.NHeads * length;
        long final = 4L * c.DModel + 3L * c.VocabSize;
        return batch * length * elementSize * (c.NLayers * perLayer + final);
    }

    /// <summary>Refuses a value that does not broadcast to the hook's tensor for this batch.</summary>
    private static void CheckBroadcast(int index, HookInfo hook, ModelConfig c, long[] value, int batch, int queries, int keys)
    {
        var dims = HookCatalogue.Dimensions(hook, c, batch, queries, keys);
        if (!Intervention.BroadcastsTo(value, dims))
            throw new InvalidRequestException($"interventions[{index}]: a value of shape [{string.Join(", ", value)}] does not broadcast to '{hook.Name}' of shape [{string.Join(", ", dims)}] ({hook.Shape})");
    }
}
