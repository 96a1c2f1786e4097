using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace InterpMesh.Runtime.Architectures;

/// <summary>Which logits a forward returns.</summary>
public enum LogitsMode
{
    /// <summary>No logits: the forward stops after the deepest captured hook.</summary>
    None,
    /// <summary>Logits at each row's last real token: <c>[batch, 1, vocab]</c>.</summary>
    Last,
    /// <summary>Logits at every position: <c>[batch, pos, vocab]</c>.</summary>
    All,
}

/// <summary>
/// The one forward for every supported architecture (GPT-2, GPT-Neo, GPT-J, GPT-NeoX, Llama, Mistral,
/// Qwen2/3, Phi-3, OLMo-2, Gemma 1/2/3, llama2.c),
/// driven by a <see cref="ModelConfig"/>, with TransformerLens hook points evaluated against a
/// request-scoped <see cref="HookPlan"/>.
/// </summary>
/// <remarks>
/// Call on a torch worker thread inside a dispose scope and inference mode (see
/// <see cref="Execution.TorchWorker"/>): every tensor it returns or hands to a capture sink belongs
/// to the caller's scope. Not thread-safe per call site only in the sense that a
/// <see cref="KvCache"/> belongs to one request; the model itself is read-only and shared.
/// </remarks>
public sealed class Transformer : IDisposable
{
    private readonly LayerHookNames[] names;
    private readonly RotaryFrequencies? globalRope;
    private readonly RotaryFrequencies? localRope;
    private readonly Tensor? embedScale;

    public Transformer(ModelConfig config, TransformerWeights weights, string source)
    {
        config.Validate(source);
        weights.Validate(config, source);
        // Weights live as long as the model, not as long as the dispose scope that loaded them.
        foreach (var t in weights.AllTensors())
            t.DetachFromDisposeScope();
        Config = config;
        Weights = weights;
        Hooks = new HookCatalogue(config);
        Parameters = new WeightCatalogue(config, weights);
        names = Enumerable.Range(0, config.NLayers).Select(l => new LayerHookNames(l)).ToArray();
        if (config.Positional == PositionalKind.Rotary)
        {
            globalRope = new RotaryFrequencies(config.Rope ?? new RopeSettings { Theta = config.RopeTheta }, config.RotaryDim, config.RotaryInterleaved);
            if (config.LocalRope is not null)
                localRope = new RotaryFrequencies(config.LocalRope, config.RotaryDim, config.RotaryInterleaved);
        }
        if (config.ScaleEmbeddings)
        {
            // Hugging Face's Gemma rounds √d_model to the activation dtype before multiplying.
            embedScale = tensor(Math.Sqrt(config.DModel), dtype: weights.Embed.dtype, device: weights.Embed.device);
            embedScale.DetachFromDisposeScope();
        }
    }

    public ModelConfig Config { get; }
    public TransformerWeights Weights { get; }
    public HookCatalogue Hooks { get; }
    /// <summary>The parameters under TransformerLens names and layouts (GetWeights).</summary>
    public WeightCatalogue Parameters { get; }
    public ScalarType DType => Weights.Embed.dtype;
    public Device Device => Weights.Embed.device;

    /// <summary>Allocates a KV cache for <paramref name="batch"/> rows of up to <paramref name="maxLength"/> tokens.</summary>
    public KvCache NewCache(int batch, int maxLength)
    {
        if (maxLength > Config.ContextLength)
            throw new ArgumentException($"{maxLength} tokens exceed the model's context length of {Config.ContextLength}");
        return new KvCache(Config, batch, maxLength, DType, Device);
    }

    /// <summary>
    /// Runs the model on <paramref name="tokens"/> <c>[batch, pos]</c> (int64) with one plan for every row.
    /// </summary>
    /// <param name="tokens">Token ids; with a cache, only the new tokens.</param>
    /// <param name="mask">Which of these positions are real tokens (bool <c>[batch, pos]</c>); null means all.
    /// Padding may be on either side; padded positions never influence real ones.</param>
    /// <param name="plan">Captures and interventions for this request.</param>
    /// <param name="sink">Receives captures as each stage (embeddings, each block, the final norm) completes,
    /// on this thread, in the caller's dispose scope (may be null when nothing is captured).</param>
    /// <param name="logits">Which logits to compute.</param>
    /// <param name="cache">KV cache for incremental decoding, or null.</param>
    /// <returns>The logits, or null for <see cref="LogitsMode.None"/>.</returns>
    public Tensor? Forward(Tensor tokens, Tensor? mask, HookPlan plan, CaptureSink? sink, LogitsMode logits, KvCache? cache = null)
    {
        if (sink is null && plan.CapturedHooks.Any())
            throw new ArgumentException("the plan captures hooks but no capture sink was given");
        return Forward(tokens, mask, [new HookSegment(0, (int)tokens.shape[0], plan, sink)], logits, cache, CancellationToken.None);
    }

    /// <summary>
    /// Runs the model on <paramref name="tokens"/> <c>[batch, pos]</c> for several requests at once:
    /// each <see cref="HookSegment"/> owns a contiguous range of rows with its own plan, sink and
    /// receipts. With a cache, each row continues from its own cached length (rows of one segment
    /// share it), so requests at different points of their generation share one decode step.
    /// </summary>
    /// <param name="cancellation">Checked before each block: a cancelled forward stops at the next block boundary.</param>
    public Tensor? Forward(Tensor tokens, Tensor? mask, IReadOnlyList<HookSegment> segments, LogitsMode logits, KvCache? cache, CancellationToken cancellation)
    {
        try
        {
            return ForwardRows(tokens, mask, segments, logits, cache, cancellation);
        }
        catch when (cache is not null)
        {
            // The cache mask may hold this forward's columns although the rows' lengths did not
            // advance; the next decode step reads the mask as its attention mask.
            cache.ForgetUnwrittenColumns();
            throw;
        }
    }

    private Tensor? ForwardRows(Tensor tokens, Tensor? mask, IReadOnlyList<HookSegment> segments, LogitsMode logits, KvCache? cache, CancellationToken cancellation)
    {
        if (tokens.dim() != 2)
            throw new ArgumentException($"token ids must be [batch, pos], got [{string.Join(", ", tokens.shape)}]");
        int b = (int)tokens.shape[0], t = (int)tokens.shape[1];
        tokens = tokens.to(ScalarType.Int64).to(Device);
        mask = mask?.to(Device);
        if (t == 0)
            throw new InvalidRequestException("the input has no tokens");
        if (cache is not null && cache.Batch != b)
            throw new ArgumentException($"the KV cache holds {cache.Batch} rows but the input has {b}");
        var past = new int[b];
        for (int r = 0; r < b; r++)
            past[r] = cache?.RowLength(r) ?? 0;
        bool uniform = past.All(p => p == past[0]);
        int past0 = past[0], end = past.Max() + t;
        if (end > (cache?.Capacity ?? Config.ContextLength))
            throw new InvalidRequestException($"{end} tokens exceed the {(cache is null ? "model's context length" : "KV cache's capacity")} of {cache?.Capacity ?? Config.ContextLength}");
        long minId = tokens.min().item<long>(), maxId = tokens.max().item<long>();
        if (minId < 0 || maxId >= Config.VocabSize)
            throw new InvalidRequestException($"token id {(minId < 0 ? minId : maxId)} is outside the vocabulary (0..{Config.VocabSize - 1})");
        var offsets = new int[segments.Count];
        int covered = 0;
        for (int i = 0; i < segments.Count; i++)
        {
            var s = segments[i];
            if (s.Start != covered || s.Rows < 1)
                throw new ArgumentException("hook segments must cover the batch's rows in order, without gaps");
            covered += s.Rows;
            offsets[i] = past[s.Start];
            for (int r = s.Start; r < s.Start + s.Rows; r++)
            {
                if (past[r] != offsets[i])
                    throw new ArgumentException("rows of one hook segment must share their KV-cache length");
            }
        }
        if (covered != b)
            throw new ArgumentException($"hook segments cover {covered} rows but the input has {b}");

        // A decode step (one real token per row, past positions in the cache, no sliding window)
        // takes a shorter path: the cache mask already says which keys each row may see (it is kept
        // false past every row's length), so neither a causal mask nor position cumsums are built.
        bool windowed = Config.SlidingWindow is int w && end > w;
        bool decode = cache is not null && t == 1 && mask is null && !windowed;
        var newMask = mask is null ? null : mask.to(ScalarType.Bool);
        if (newMask is not null && !newMask.shape.SequenceEqual(tokens.shape))
            throw new ArgumentException($"attention mask shape [{string.Join(", ", newMask.shape)}] differs from the token shape [{string.Join(", ", tokens.shape)}]");
        // Columns of the cache this forward writes, per row (only needed when rows differ).
        Tensor? columns = uniform ? null : tensor(past.Select(p => (long)p).ToArray(), device: Device).view(b, 1);
        if (columns is not null && t > 1)
            columns = Scalars.Add(columns, Scalars.Arange(t, ScalarType.Int64, Device).view(1, t));
        Tensor keyMask;
        if (cache is not null)
        {
            if (columns is null)
            {
                var written = cache.Mask.narrow(1, past0, t);
                if (newMask is null)
                    written.fill_(Scalars.True);
                else
                    written.copy_(newMask);
            }
            else
            {
                cache.Mask.scatter_(1, columns, newMask ?? ones(b, t, ScalarType.Bool, Device));
            }
            keyMask = cache.Mask.narrow(1, 0, end);
        }
        else
        {
            keyMask = newMask ?? ones(b, t, ScalarType.Bool, Device);
        }
        var pastRows = columns?.narrow(1, 0, 1).squeeze(1);
        Tensor positions, lastReal;
        Tensor? keyPositions = null;
        if (decode)
        {
            // The new token's position is the count of real tokens up to and including it, less one.
            positions = keyMask.sum([1], keepdim: true, type: ScalarType.Int64).sub(Scalars.One);
            if (pastRows is not null)
            {
                lastReal = pastRows;
            }
            else
            {
                using Scalar fill = past0;
                lastReal = full(b, fill, ScalarType.Int64, device: Device);
            }
        }
        else
        {
            keyPositions = keyMask.to(ScalarType.Int64).cumsum(1).sub(Scalars.One).clamp_min(Scalars.Zero);
            positions = columns is null ? keyPositions.narrow(1, past0, t) : keyPositions.gather(1, columns);
            var queryReal = newMask ?? ones(b, t, ScalarType.Bool, Device);
            lastReal = (queryReal.to(ScalarType.Int64) * Scalars.Arange(t, ScalarType.Int64, Device)).amax([1]);
            lastReal = pastRows is null ? Scalars.AddValue(lastReal, past0) : Scalars.Add(lastReal, pastRows);
        }

        var ctx = new HookContext(Hooks, segments, lastReal, offsets);

        // Attention mask: causal, and keys must be real tokens. A padding query may see itself so
        // that its softmax row is never empty (its output is discarded anyway).
        Tensor? allowed = null;
        bool causalFlag = false;
        if (decode)
        {
            // Rows at different lengths, or padding among the keys: the cache mask is the attention mask.
            if (columns is not null || !keyMask.all().item<bool>())
                allowed = keyMask.view(b, 1, 1, end);
        }
        else if (columns is not null)
        {
            // Rows at different cache lengths: causality is per row.
            var qi = columns.unsqueeze(2);
            var kj = Scalars.Arange(end, ScalarType.Int64, Device).view(1, 1, end);
            allowed = kj.le(qi).logical_and(keyMask.unsqueeze(1).logical_or(kj.eq(qi))).unsqueeze(1);
        }
        else
        {
            // Whether any key in use is padding (then the causal flag alone is not enough).
            bool padded = !keyMask.all().item<bool>();
            if (padded || (past0 > 0 && t > 1) || (past0 == 0 && t > 1 && (AnyPatternWanted(ctx) || windowed)))
            {
                var qi = Scalars.Arange(past0, past0 + t, ScalarType.Int64, Device).view(t, 1);
                var kj = Scalars.Arange(end, ScalarType.Int64, Device).view(1, end);
                var causal = kj.le(qi);
                var diagonal = kj.eq(qi);
                allowed = causal.unsqueeze(0).logical_and(keyMask.unsqueeze(1).logical_or(diagonal.unsqueeze(0))).unsqueeze(1);
            }
            else if (past0 == 0 && t > 1)
            {
                causalFlag = true;
            }
        }
        // The cache columns as a scatter index for every layer's keys and values.
        var columnIndex = columns?.view(b, 1, t, 1).expand(b, Config.NKvHeads, t, Config.DHead);
        var attention = new AttentionLayout(allowed, causalFlag, past0, columnIndex, end);
        Tensor? slidingAllowed = null;
        if (windowed)
        {
            var window = SlidingWindowMask(positions, keyPositions!, Config.SlidingWindow!.Value);
            slidingAllowed = allowed is null ? window : allowed.logical_and(window);
        }
        // Padding query rows get an all-zero attention pattern (as TransformerLens), when patterns are materialised.
        var queryMask = newMask is not null && !newMask.all().item<bool>() ? newMask.view(b, 1, t, 1) : null;

        int lastLayer = LastLayerNeeded(ctx, segments, logits);

        Tensor resid;
        using (var scope = NewDisposeScope())
        {
            var embed = Weights.Embed.index_select(0, tokens.reshape(-1)).view(b, t, Config.DModel);
            if (embedScale is not null)
                embed = embed * embedScale;
            embed = ctx.Run("hook_embed", embed);
            if (Config.Positional == PositionalKind.Learned)
            {
                var pos = Weights.PosEmbed!.index_select(0, positions.reshape(-1)).view(b, t, Config.DModel);
                pos = ctx.Run("hook_pos_embed", pos);
                resid = Scalars.Add(embed, pos);
            }
            else
            {
                resid = embed;
            }
            resid.MoveToOuterDisposeScope();
        }
        ctx.Flush();

        var rope = globalRope?.CosSin(positions, DType, end);
        var localCosSin = localRope?.CosSin(positions, DType, end);

        for (int l = 0; l <= Math.Min(lastLayer, Config.NLayers - 1); l++)
        {
            cancellation.ThrowIfCancellationRequested();
            using (var scope = NewDisposeScope())
            {
                bool sliding = Config.IsSliding(l);
                var (cos, sin) = (sliding && localCosSin is not null ? localCosSin : rope) ?? default;
                var layerAllowed = sliding && slidingAllowed is not null ? slidingAllowed : allowed;
                resid = Block(l, resid, ctx, attention, layerAllowed, causalFlag && !(sliding && slidingAllowed is not null), queryMask, cos, sin, cache);
                resid.MoveToOuterDisposeScope();
            }
            ctx.Flush();
            BlockCompleted?.Invoke(l);
        }
        if (cache is not null && lastLayer >= Config.NLayers - 1)
        {
            for (int r = 0; r < b; r++)
                cache.SetRowLength(r, past[r] + t);
        }
        if (lastLayer < Config.NLayers)
            return null;

        Tensor? output;
        using (var scope = NewDisposeScope())
        {
            bool allPositions = logits == LogitsMode.All || ctx.Wants("ln_final.hook_normalized") || ctx.Wants("ln_final.hook_scale") || ctx.Wants("logits");
            // Each row's last real position within this forward (the only one when t is 1).
            var local = t == 1 ? null : pastRows is null ? Scalars.SubValue(lastReal, past0) : lastReal - pastRows;
            var x = allPositions || local is null ? resid : GatherPositions(resid, local);
            x = Norm(x, Weights.LnFinalWeight, Weights.LnFinalBias, ctx, "ln_final.hook_scale", "ln_final.hook_normalized");
            output = null;
            if (logits != LogitsMode.None || ctx.Wants("logits"))
            {
                if (allPositions && local is not null && logits == LogitsMode.Last && !ctx.Wants("logits"))
                    x = GatherPositions(x, local);
                var result = Linear(x, Weights.Unembed, Weights.UnembedBias);
                if (Config.FinalSoftcap is double cap)
                    result = Softcap(result, cap);
                result = ctx.Run("logits", result);
                if (logits == LogitsMode.Last && result.shape[1] != 1)
                    result = GatherPositions(result, local!);
                output = logits == LogitsMode.None ? null : result.MoveToOuterDisposeScope();
            }
        }
        ctx.Flush();
        return output;
    }

    /// <summary>Raised on the forward's thread after each block (diagnostics: how far a cancelled forward ran).</summary>
    public event Action<int>? BlockCompleted;

    private bool AnyPatternWanted(HookContext ctx) =>
        ctx.Active.Count != 0 && names.Any(n => ctx.Wants(n.Pattern) || ctx.Wants(n.AttnScores));

    /// <summary>The deepest block the request needs: all of them when logits are wanted.</summary>
    private int LastLayerNeeded(HookContext ctx, IReadOnlyList<HookSegment> segments, LogitsMode logits)
    {
        if (logits != LogitsMode.None)
            return Config.NLayers;
        int deepest = segments.Max(s => s.Plan.DeepestCaptureOrder);
        return deepest < 0 ? -1 : Hooks.All[deepest].Layer;
    }

    /// <summary>
    /// The sliding-window term of the attention mask, from position ids: query position p sees key
    /// positions in (p − window, p], i.e. <paramref name="window"/> keys including its own, as
    /// transformers' masking utilities do. <c>[batch, 1, queries, keys]</c>; combine with the
    /// causal/padding mask.
    /// </summary>
    internal static Tensor SlidingWindowMask(Tensor queryPositions, Tensor keyPositions, int window) =>
        keyPositions.unsqueeze(1).gt(Scalars.SubValue(queryPositions.unsqueeze(2), window)).unsqueeze(1);

    /// <summary><c>tanh(x / cap) · cap</c>.</summary>
    private static Tensor Softcap(Tensor x, double cap)
    {
        using Scalar c = cap;
        return x.div(c).tanh_().mul(c);
    }

    private static Tensor GatherPositions(Tensor x, Tensor localIndex)
    {
        var index = localIndex.view(-1, 1, 1).expand(x.shape[0], 1, x.shape[2]);
        return x.gather(1, index);
    }

    /// <summary>
    /// The config's norm. Without hooks: fused LayerNorm, or RMSNorm in float32. With
    /// <paramref name="scaleHook"/> or <paramref name="normalizedHook"/> requested, the TransformerLens
    /// decomposition: hook_scale = √(mean((x − μ)²) + ε) (μ = 0 for RMSNorm) <c>[batch, pos, 1]</c>,
    /// hook_normalized = (x − μ) / scale before the gain and bias, output = normalized · w + b.
    /// </summary>
    private Tensor Norm(Tensor x, Tensor weight, Tensor? bias, HookContext? ctx = null, string? scaleHook = null, string? normalizedHook = null)
    {
        bool hooked = ctx is not null && ((scaleHook is not null && ctx.Wants(scaleHook)) || (normalizedHook is not null && ctx.Wants(normalizedHook)));
        if (Config.Norm == NormKind.LayerNorm && !hooked)
            return F.layer_norm(x, [x.shape[^1]], weight, bias, Config.NormEps);
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);
        Tensor normed;
        if (Config.Norm == NormKind.LayerNorm)
        {
            var centred = xf - xf.mean([-1], keepdim: true);
            var scale = Scalars.AddValue(centred.pow(Scalars.Two).mean([-1], keepdim: true), Config.NormEps).sqrt();
            scale = ctx!.Run(scaleHook!, scale);
            normed = centred / scale;
        }
        else if (!hooked)
        {
            normed = xf * Scalars.AddValue(xf.pow(Scalars.Two).mean([-1], keepdim: true), Config.NormEps).rsqrt();
        }
        else
        {
            var meanSquare = Scalars.AddValue(xf.pow(Scalars.Two).mean([-1], keepdim: true), Config.NormEps);
            if (ctx!.Wants(scaleHook!))
            {
                var scale = ctx.Run(scaleHook!, meanSquare.sqrt());
                normed = xf / scale;
            }
            else
            {
                normed = xf * meanSquare.rsqrt();
            }
        }
        if (x.dtype != ScalarType.Float32)
            normed = normed.to(x.dtype);
        if (hooked)
            normed = ctx!.Run(normalizedHook!, normed);
        var y = weight * normed;
        return bias is null ? y : Scalars.Add(y, bias);
    }

    /// <summary>RMSNorm without hooks (q/k norms), with the model's epsilon.</summary>
    private Tensor Rms(Tensor x, Tensor weight)
    {
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);
        var normed = xf * Scalars.AddValue(xf.pow(Scalars.Two).mean([-1], keepdim: true), Config.NormEps).rsqrt();
        return weight * (x.dtype == ScalarType.Float32 ? normed : normed.to(x.dtype));
    }

    /// <summary>RoPE on the first <c>RotaryDim</c> dims: rotate_half pairs (i, i + rot/2), or GPT-J's adjacent pairs (2i, 2i + 1).</summary>
    private Tensor Rope(Tensor x, Tensor cos, Tensor sin)
    {
        int rot = Config.RotaryDim;
        var xr = rot == Config.DHead ? x : x.narrow(-1, 0, rot);
        Tensor rotated;
        if (Config.RotaryInterleaved)
        {
            var pairs = xr.unflatten(xr.dim() - 1, [rot / 2, 2]);
            rotated = stack([-pairs.select(-1, 1), pairs.select(-1, 0)], -1).flatten(xr.dim() - 1);
        }
        else
        {
            var halves = xr.chunk(2, -1);
            rotated = cat([-halves[1], halves[0]], -1);
        }
        var y = Scalars.Add(xr * cos, rotated * sin);
        return rot == Config.DHead ? y : cat([y, x.narrow(-1, rot, Config.DHead - rot)], -1);
    }

    private Tensor Block(int l, Tensor resid, HookContext ctx, AttentionLayout attention, Tensor? allowed, bool causalFlag, Tensor? queryMask, Tensor? cos, Tensor? sin, KvCache? cache)
    {
        var n = names[l];
        var w = Weights.Blocks[l];
        var c = Config;
        long b = resid.shape[0], t = resid.shape[1];
        long qWidth = (long)c.NHeads * c.DHead, kvWidth = (long)c.NKvHeads * c.DHead;

        resid = ctx.Run(n.ResidPre, resid);

        // q, k, v. With hook_attn_in / hook_{q,k,v}_input requested, TransformerLens' split-input
        // path: the residual is repeated per head (per kv head for k and v), normalised per copy and
        // projected per head, so each head's input can be changed alone.
        Tensor q, k, v;
        if (ctx.Wants(n.AttnIn) || ctx.Wants(n.QInput) || ctx.Wants(n.KInput) || ctx.Wants(n.VInput))
        {
            var attnIn = ctx.Run(n.AttnIn, resid.unsqueeze(2).expand(b, t, c.NHeads, c.DModel));
            var qIn = ctx.Run(n.QInput, attnIn);
            var kIn = ctx.Run(n.KInput, resid.unsqueeze(2).expand(b, t, c.NKvHeads, c.DModel));
            var vIn = ctx.Run(n.VInput, resid.unsqueeze(2).expand(b, t, c.NKvHeads, c.DModel));
            Tensor PreNorm(Tensor x) => c.PreNorms ? Norm(x, w.Ln1Weight!, w.Ln1Bias) : x;
            var parts = w.Qkv.split([qWidth, kvWidth, kvWidth], 1);
            var biases = w.QkvBias?.split([qWidth, kvWidth, kvWidth], 0);
            Tensor PerHead(Tensor input, int i, long heads)
            {
                var y = einsum("bthm,mhd->bthd", PreNorm(input), parts[i].view(c.DModel, heads, c.DHead));
                return biases is null ? y : Scalars.Add(y, biases[i].view(heads, c.DHead));
            }
            q = PerHead(qIn, 0, c.NHeads);
            k = PerHead(kIn, 1, c.NKvHeads);
            v = PerHead(vIn, 2, c.NKvHeads);
            // ln1's hooks still see the unsplit residual (shape [batch, pos, d_model]); changing them
            // does not reach the per-head copies.
            if (c.PreNorms && (ctx.Wants(n.Ln1Scale) || ctx.Wants(n.Ln1Normalized)))
                Norm(resid, w.Ln1Weight!, w.Ln1Bias, ctx, n.Ln1Scale, n.Ln1Normalized);
        }
        else
        {
            var attnInput = c.PreNorms ? Norm(resid, w.Ln1Weight!, w.Ln1Bias, ctx, n.Ln1Scale, n.Ln1Normalized) : resid;
            var qkv = Linear(attnInput, w.Qkv, w.QkvBias);
            var parts = qkv.split([qWidth, kvWidth, kvWidth], -1);
            // Contiguous q/k/v: kernels then see the same memory layout whether or not a hook replaced
            // the tensor, so a no-op intervention is bit-for-bit a no-op.
            q = parts[0].contiguous().view(b, t, c.NHeads, c.DHead);
            k = parts[1].contiguous().view(b, t, c.NKvHeads, c.DHead);
            v = parts[2].contiguous().view(b, t, c.NKvHeads, c.DHead);
        }
        q = ctx.Run(n.Q, q);
        k = ctx.Run(n.K, k);
        v = ctx.Run(n.V, v);
        if (c.QkNorm == QkNormKind.PerHead)
        {
            q = Rms(q, w.QNormWeight!);
            k = Rms(k, w.KNormWeight!);
        }
        else if (c.QkNorm == QkNormKind.WholeProjection)
        {
            q = Rms(q.reshape(b, t, qWidth), w.QNormWeight!).view(b, t, c.NHeads, c.DHead);
            k = Rms(k.reshape(b, t, kvWidth), w.KNormWeight!).view(b, t, c.NKvHeads, c.DHead);
        }
        if (cos is not null)
        {
            q = ctx.Run(n.RotQ, Rope(q, cos, sin!));
            k = ctx.Run(n.RotK, Rope(k, cos, sin!));
        }

        var qh = q.transpose(1, 2);
        var kh = k.transpose(1, 2);
        var vh = v.transpose(1, 2);
        if (cache is not null)
        {
            if (attention.Columns is null)
            {
                cache.Keys[l].narrow(2, attention.Past, t).copy_(kh);
                cache.Values[l].narrow(2, attention.Past, t).copy_(vh);
            }
            else
            {
                cache.Keys[l].scatter_(2, attention.Columns, kh);
                cache.Values[l].scatter_(2, attention.Columns, vh);
            }
            kh = cache.Keys[l].narrow(2, 0, attention.End);
            vh = cache.Values[l].narrow(2, 0, attention.End);
        }
        Tensor z;
        double scale = c.ScoreScale(l);
        bool explicitScores = ctx.Wants(n.AttnScores) || ctx.Wants(n.Pattern) || c.AttnSoftcap is not null;
        if (explicitScores)
        {
            if (c.GroupSize > 1)
            {
                kh = kh.repeat_interleave(c.GroupSize, 1);
                vh = vh.repeat_interleave(c.GroupSize, 1);
            }
            var scores = Scalars.MulValue(qh.matmul(kh.transpose(-2, -1)), scale);
            if (c.AttnSoftcap is double cap)
                scores = Softcap(scores, cap);
            if (allowed is not null)
                scores = scores.masked_fill(allowed.logical_not(), Scalars.NegativeInfinity);
            else if (causalFlag)
                scores = scores.masked_fill(ones(t, t, ScalarType.Bool, scores.device).triu(1), Scalars.NegativeInfinity);
            scores = ctx.Run(n.AttnScores, scores);
            var pattern = scores.softmax(-1);
            pattern = pattern.nan_to_num(0.0);
            if (queryMask is not null && ctx.Wants(n.Pattern))
                pattern = pattern.masked_fill(queryMask.logical_not(), Scalars.ZeroReal);
            pattern = ctx.Run(n.Pattern, pattern);
            z = pattern.matmul(vh);
        }
        else
        {
            // The fused kernel scales by 1/√d_head; other scales are folded into q.
            double standard = 1.0 / Math.Sqrt(c.DHead);
            if (scale != standard)
                qh = Scalars.MulValue(qh, scale / standard);
            if (c.GroupSize > 1 && t == 1)
            {
                // One query per row under grouped-query attention: the g query heads of a kv head
                // become g queries of that kv head, so the cache is read in place, not repeated g times.
                var grouped = qh.reshape(b, c.NKvHeads, c.GroupSize, c.DHead);
                z = F.scaled_dot_product_attention(grouped, kh, vh, allowed, 0.0, false).view(b, c.NHeads, 1, c.DHead);
            }
            else
            {
                if (c.GroupSize > 1)
                {
                    kh = kh.repeat_interleave(c.GroupSize, 1);
                    vh = vh.repeat_interleave(c.GroupSize, 1);
                }
                z = F.scaled_dot_product_attention(qh, kh, vh, allowed, 0.0, causalFlag);
            }
        }
        z = ctx.Run(n.Z, z.transpose(1, 2));

        Tensor attnOut;
        if (ctx.Wants(n.Result))
        {
            var result = einsum("bthd,hdm->bthm", z, w.Out.view(c.NHeads, c.DHead, c.DModel));
            result = ctx.Run(n.Result, result);
            attnOut = result.sum(2);
            if (w.OutBias is not null)
                attnOut = Scalars.Add(attnOut, w.OutBias);
        }
        else
        {
            attnOut = Linear(z.reshape(b, t, qWidth), w.Out, w.OutBias);
        }
        if (c.PostNorms)
            attnOut = Norm(attnOut, w.Ln1PostWeight!, null, ctx, n.Ln1PostScale, n.Ln1PostNormalized);
        attnOut = ctx.Run(n.AttnOut, attnOut);

        // Parallel blocks feed the MLP from the block's input; sequential ones from resid + attention.
        bool parallel = c.Residual != ResidualKind.Sequential;
        var residMid = parallel ? null : ctx.Run(n.ResidMid, Scalars.Add(resid, attnOut));
        var mlpIn = ctx.Run(n.MlpIn, parallel ? resid : residMid!);
        Tensor ln2;
        if (!c.PreNorms)
            ln2 = mlpIn;
        else if (c.Residual == ResidualKind.ParallelSharedNorm)
            ln2 = Norm(mlpIn, w.Ln1Weight!, w.Ln1Bias, ctx, n.Ln2Scale, n.Ln2Normalized);
        else
            ln2 = Norm(mlpIn, w.Ln2Weight!, w.Ln2Bias, ctx, n.Ln2Scale, n.Ln2Normalized);

        Tensor post;
        if (!c.GatedMlp)
        {
            var pre = ctx.Run(n.MlpPre, Linear(ln2, w.MlpIn, w.MlpInBias));
            post = c.Mlp == MlpKind.Gelu ? F.gelu(pre) : F.gelu(pre, TorchSharp.Modules.GELU.Approximate.tanh, false);
        }
        else
        {
            var gateUp = Linear(ln2, w.MlpIn, w.MlpInBias).chunk(2, -1);
            // Contiguous halves: vectorised and strided silu differ in the last bit (see q/k/v).
            var gate = ctx.Run(n.MlpPre, gateUp[0].contiguous());
            var up = ctx.Run(n.MlpPreLinear, gateUp[1].contiguous());
            post = (c.Mlp == MlpKind.GeGlu ? F.gelu(gate, TorchSharp.Modules.GELU.Approximate.tanh, false) : F.silu(gate)) * up;
        }
        post = ctx.Run(n.MlpPost, post);
        var mlpOut = Linear(post, w.MlpOut, w.MlpOutBias);
        if (c.PostNorms)
            mlpOut = Norm(mlpOut, w.Ln2PostWeight!, null, ctx, n.Ln2PostScale, n.Ln2PostNormalized);
        mlpOut = ctx.Run(n.MlpOut, mlpOut);
        return ctx.Run(n.ResidPost, parallel ? Scalars.AddInPlace(Scalars.Add(resid, attnOut), mlpOut) : Scalars.Add(residMid!, mlpOut));
    }

    /// <summary>
    /// <c>x · W + b</c> with <paramref name="w"/> in the compute layout <c>[in, out]</c>: oneMKL's
    /// non-transposed product, which at the 1–16 rows of a decode step runs 1.5–2.8× faster than
    /// <c>F.linear</c>'s product with a stored transpose, and as fast at a prefill's 1 024 rows.
    /// </summary>
    internal static Tensor Linear(Tensor x, Tensor w, Tensor? bias)
    {
        // One call without a bias: each extra op costs ~2 µs, which a small model's decode step feels.
        var y = x.matmul(w);
        return bias is null ? y : Scalars.AddInPlace(y, bias);
    }

    public void Dispose()
    {
        Weights.Dispose();
        embedScale?.Dispose();
        globalRope?.Dispose();
        localRope?.Dispose();
    }
}

/// <summary>How one forward's queries may attend to keys.</summary>
/// <param name="Allowed">Boolean <c>[batch or 1, 1, query, key]</c> mask, or null when the causal flag (or nothing) suffices.</param>
/// <param name="CausalFlag">Whether scaled-dot-product attention's own causal mask applies.</param>
/// <param name="Past">The cache length shared by every row (when <paramref name="Columns"/> is null).</param>
/// <param name="Columns">Per-row cache columns of the new tokens when rows differ in cache length, as a scatter index <c>[batch, kv_heads, pos, d_head]</c>.</param>
/// <param name="End">Key columns in use: the longest row's length after this forward.</param>
internal sealed record AttentionLayout(Tensor? Allowed, bool CausalFlag, int Past, Tensor? Columns, int End);

/// <summary>
/// Keys and values of past positions for incremental decoding. Each row keeps its own length, so
/// rows of different requests can share one decode step; <see cref="Rows"/> gives a view of some
/// rows (sharing storage) and <see cref="MoveRows"/> compacts them.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly int[] lengths;
    private readonly int offset;

    internal KvCache(ModelConfig c, int batch, int capacity, ScalarType dtype, Device device)
    {
        Batch = batch;
        Capacity = capacity;
        Keys = new Tensor[c.NLayers];
        Values = new Tensor[c.NLayers];
        for (int l = 0; l < c.NLayers; l++)
        {
            Keys[l] = zeros([batch, c.NKvHeads, capacity, c.DHead], dtype, device);
            Values[l] = zeros([batch, c.NKvHeads, capacity, c.DHead], dtype, device);
            Keys[l].DetachFromDisposeScope();
            Values[l].DetachFromDisposeScope();
        }
        Mask = zeros([batch, capacity], ScalarType.Bool, device);
        Mask.DetachFromDisposeScope();
        lengths = new int[batch];
    }

    private KvCache(KvCache parent, int start, int count)
    {
        Batch = count;
        Capacity = parent.Capacity;
        Keys = parent.Keys.Select(k => Detached(k.narrow(0, start, count))).ToArray();
        Values = parent.Values.Select(v => Detached(v.narrow(0, start, count))).ToArray();
        Mask = Detached(parent.Mask.narrow(0, start, count));
        lengths = parent.lengths;
        offset = parent.offset + start;
    }

    private static Tensor Detached(Tensor t)
    {
        t.DetachFromDisposeScope();
        return t;
    }

    public int Batch { get; }
    public int Capacity { get; }

    /// <summary>Positions filled so far in the longest row (prompt + generated, including padding).</summary>
    public int Length => Enumerable.Range(0, Batch).Max(RowLength);

    /// <summary>Positions filled so far in row <paramref name="row"/>.</summary>
    public int RowLength(int row) => lengths[offset + row];

    internal void SetRowLength(int row, int length) => lengths[offset + row] = length;

    internal Tensor[] Keys { get; }
    internal Tensor[] Values { get; }
    /// <summary><c>[batch, capacity]</c>: which filled positions are real tokens.</summary>
    internal Tensor Mask { get; }

    /// <summary>A view of rows <c>[start, start + count)</c> sharing this cache's storage and lengths; dispose it when done.</summary>
    public KvCache Rows(int start, int count)
    {
        if (start < 0 || count < 1 || start + count > Batch)
            throw new ArgumentOutOfRangeException(nameof(count), $"rows [{start}, {start + count}) are outside a cache of {Batch} rows");
        return new KvCache(this, start, count);
    }

    /// <summary>Empties rows <c>[start, start + count)</c> for a new request.</summary>
    public void ResetRows(int start, int count)
    {
        for (int r = start; r < start + count; r++)
            SetRowLength(r, 0);
        Mask.narrow(0, start, count).fill_(Scalars.False);
    }

    /// <summary>
    /// Clears the mask past each row's length. The mask is kept false there, so that a decode step
    /// can use it as the attention mask; a forward that fails after writing its columns calls this.
    /// </summary>
    internal void ForgetUnwrittenColumns()
    {
        using var scope = NewDisposeScope();
        var filled = tensor(Enumerable.Range(0, Batch).Select(r => (long)RowLength(r)).ToArray(), device: Mask.device).view(Batch, 1);
        Mask.masked_fill_(Scalars.Arange(Capacity, ScalarType.Int64, Mask.device).view(1, Capacity).ge(filled), Scalars.False);
    }

    /// <summary>
    /// Rearranges rows: afterwards row <c>i</c> holds what row <c>order[i]</c> held (keys, values,
    /// mask, length). Rows past <c>order.Length</c> keep stale contents; reset them before reuse.
    /// </summary>
    public void Reorder(IReadOnlyList<int> order)
    {
        if (order.Count == 0 || order.Select((r, i) => r == i).All(same => same))
            return;
        using var scope = NewDisposeScope();
        var index = tensor(order.Select(r => (long)r).ToArray(), device: Mask.device);
        foreach (var t in Keys.Concat(Values).Append(Mask))
            t.narrow(0, 0, order.Count).copy_(t.index_select(0, index));
        var moved = order.Select(RowLength).ToArray();
        for (int i = 0; i < moved.Length; i++)
            SetRowLength(i, moved[i]);
    }

    /// <summary>
    /// Fills every row of this cache with the first <paramref name="length"/> positions of row
    /// <paramref name="sourceRow"/> of <paramref name="source"/> (keys, values, mask) and sets each
    /// row's length to <paramref name="length"/>: several continuations of one shared prefix.
    /// </summary>
    public void CopyPrefix(KvCache source, int sourceRow, int length)
    {
        if (sourceRow < 0 || sourceRow >= source.Batch)
            throw new ArgumentOutOfRangeException(nameof(sourceRow), $"row {sourceRow} is outside a cache of {source.Batch} rows");
        if (length < 0 || length > source.RowLength(sourceRow) || length > Capacity)
            throw new ArgumentOutOfRangeException(nameof(length), $"{length} positions: the source row holds {source.RowLength(sourceRow)}, this cache takes {Capacity}");
        if (Keys.Length != source.Keys.Length)
            throw new ArgumentException("the caches belong to different models", nameof(source));
        using var scope = NewDisposeScope();
        for (int l = 0; l < Keys.Length; l++)
        {
            Keys[l].narrow(2, 0, length).copy_(source.Keys[l].narrow(0, sourceRow, 1).narrow(2, 0, length).expand(Batch, -1, -1, -1));
            Values[l].narrow(2, 0, length).copy_(source.Values[l].narrow(0, sourceRow, 1).narrow(2, 0, length).expand(Batch, -1, -1, -1));
        }
        Mask.fill_(Scalars.False);
        Mask.narrow(1, 0, length).copy_(source.Mask.narrow(0, sourceRow, 1).narrow(1, 0, length).expand(Batch, -1));
        for (int r = 0; r < Batch; r++)
            SetRowLength(r, length);
    }

    /// <summary>A larger cache holding this one's rows and contents (rows and capacity only grow).</summary>
    public KvCache Grow(ModelConfig config, int batch, int capacity)
    {
        batch = Math.Max(batch, Batch);
        capacity = Math.Max(capacity, Capacity);
        var grown = new KvCache(config, batch, capacity, Keys[0].dtype, Keys[0].device);
        using var scope = NewDisposeScope();
        for (int l = 0; l < Keys.Length; l++)
        {
            grown.Keys[l].narrow(0, 0, Batch).narrow(2, 0, Capacity).copy_(Keys[l]);
            grown.Values[l].narrow(0, 0, Batch).narrow(2, 0, Capacity).copy_(Values[l]);
        }
        grown.Mask.narrow(0, 0, Batch).narrow(1, 0, Capacity).copy_(Mask);
        for (int r = 0; r < Batch; r++)
            grown.SetRowLength(r, RowLength(r));
        return grown;
    }

    public void Dispose()
    {
        foreach (var t in Keys.Concat(Values))
            t.Dispose();
        Mask.Dispose();
    }
}

/// <summary>
/// Rotary frequencies as Hugging Face's rope initialisers compute them for each <c>rope_type</c>,
/// turned into cos/sin for the positions of one forward (in float64, then rounded to the model's
/// dtype). Lookups come from a table that grows to the longest sequence seen, not to the context length.
/// </summary>
internal sealed class RotaryFrequencies : IDisposable
{
    private readonly double[] inverse;
    private readonly double[]? longInverse;
    private readonly int longFrom;
    private readonly double attentionFactor;
    private readonly bool interleaved;

    public RotaryFrequencies(RopeSettings s, int rotaryDim, bool interleaved)
    {
        this.interleaved = interleaved;
        int half = rotaryDim / 2;
        double[] Base(double theta) => Enumerable.Range(0, half).Select(i => 1.0 / Math.Pow(theta, 2.0 * i / rotaryDim)).ToArray();
        var inv = Base(s.Theta);
        attentionFactor = 1.0;
        switch (s.Scaling)
        {
            case RopeScalingKind.None:
            case RopeScalingKind.Dynamic:
                // Dynamic NTK changes the base only for positions at or beyond max_position_embeddings,
                // which this runtime never reaches (the context length is that value).
                break;
            case RopeScalingKind.Linear:
                inv = inv.Select(f => f / s.Factor).ToArray();
                break;
            case RopeScalingKind.Llama3:
                {
                    double lowWavelen = s.OriginalContext / s.LowFreqFactor, highWavelen = s.OriginalContext / s.HighFreqFactor;
                    inv = inv.Select(f =>
                    {
                        double wavelen = 2 * Math.PI / f;
                        if (wavelen < highWavelen)
                            return f;
                        if (wavelen > lowWavelen)
                            return f / s.Factor;
                        double smooth = (s.OriginalContext / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                        return (1 - smooth) * f / s.Factor + smooth * f;
                    }).ToArray();
                    break;
                }
            case RopeScalingKind.Yarn:
                {
                    static double Mscale(double scale, double m) => scale <= 1 ? 1.0 : 0.1 * m * Math.Log(scale) + 1.0;
                    attentionFactor = s.AttentionFactor
                        ?? (s.Mscale is double m && s.MscaleAllDim is double mAll && m != 0 && mAll != 0 ? Mscale(s.Factor, m) / Mscale(s.Factor, mAll) : Mscale(s.Factor, 1));
                    double CorrectionDim(double rotations) => rotaryDim * Math.Log(s.OriginalContext / (rotations * 2 * Math.PI)) / (2 * Math.Log(s.Theta));
                    double low = CorrectionDim(s.BetaFast), high = CorrectionDim(s.BetaSlow);
                    if (s.Truncate)
                    {
                        low = Math.Floor(low);
                        high = Math.Ceiling(high);
                    }
                    low = Math.Max(low, 0);
                    high = Math.Min(high, rotaryDim - 1);
                    if (low == high)
                        high += 0.001;
                    inv = inv.Select((f, i) =>
                    {
                        double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
                        double extrapolation = 1 - ramp;
                        return f / s.Factor * (1 - extrapolation) + f * extrapolation;
                    }).ToArray();
                    break;
                }
            case RopeScalingKind.LongRope:
                {
                    attentionFactor = s.AttentionFactor
                        ?? (s.Factor <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(s.Factor) / Math.Log(s.OriginalContext)));
                    longInverse = inv.Select((f, i) => f / s.LongFactor![i]).ToArray();
                    inv = inv.Select((f, i) => f / s.ShortFactor![i]).ToArray();
                    longFrom = s.OriginalContext;
                    break;
                }
        }
        inverse = inv;
    }

    private readonly Lock tablesGate = new();
    private readonly Dictionary<(bool Long, ScalarType DType, string Device), (Tensor Cos, Tensor Sin, int Rows)> tables = [];

    /// <summary>cos and sin <c>[batch, pos, 1, rotary_dim]</c> for integer positions <c>[batch, pos]</c> below <paramref name="bound"/>.</summary>
    /// <remarks>
    /// Rows come from a table of every position below the largest bound seen so far (grown by
    /// doubling, computed in float64 and rounded once to the model's dtype), so a decode step looks
    /// its rows up instead of recomputing them; the values are those of a per-forward computation.
    /// </remarks>
    public (Tensor Cos, Tensor Sin) CosSin(Tensor positions, ScalarType dtype, int bound)
    {
        // LongRoPE uses its long factors when the forward reaches past the original context
        // (transformers decides per call from the largest position id).
        bool useLong = longInverse is not null && positions.max().item<long>() + 1 > longFrom;
        var key = (useLong, dtype, positions.device.ToString());
        Tensor cosTable, sinTable;
        lock (tablesGate)
        {
            if (!tables.TryGetValue(key, out var table) || table.Rows < bound)
            {
                int rows = Math.Max(Math.Max(bound, 64), table.Rows * 2);
                using var scope = NewDisposeScope();
                var all = Scalars.Arange(rows, ScalarType.Int64, positions.device);
                var (cos, sin) = Compute(all, useLong ? longInverse! : inverse, dtype);
                cos.DetachFromDisposeScope();
                sin.DetachFromDisposeScope();
                table.Cos?.Dispose();
                table.Sin?.Dispose();
                table = (cos, sin, rows);
                tables[key] = table;
            }
            (cosTable, sinTable) = (table.Cos, table.Sin);
        }
        var flat = positions.reshape(-1);
        long[] shape = [.. positions.shape, 1, cosTable.shape[^1]];
        return (cosTable.index_select(0, flat).view(shape), sinTable.index_select(0, flat).view(shape));
    }

    public void Dispose()
    {
        lock (tablesGate)
        {
            foreach (var (cos, sin, _) in tables.Values)
            {
                cos.Dispose();
                sin.Dispose();
            }
            tables.Clear();
        }
    }

    private (Tensor Cos, Tensor Sin) Compute(Tensor positions, double[] inv, ScalarType dtype)
    {
        var angles = positions.to(ScalarType.Float64).unsqueeze(-1) * tensor(inv, dtype: ScalarType.Float64, device: positions.device);
        var both = interleaved ? angles.repeat_interleave(2, -1) : cat([angles, angles], -1);
        var cos = both.cos();
        var sin = both.sin();
        if (attentionFactor != 1.0)
        {
            cos = Scalars.MulValue(cos, attentionFactor);
            sin = Scalars.MulValue(sin, attentionFactor);
        }
        return (cos.to(dtype), sin.to(dtype));
    }
}
