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
/// The one forward for every supported architecture (GPT-2, Llama, Qwen2, Mistral, llama2.c),
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
    private readonly Tensor? ropeCos;
    private readonly Tensor? ropeSin;

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
        names = Enumerable.Range(0, config.NLayers).Select(l => new LayerHookNames(l)).ToArray();
        if (config.Positional == PositionalKind.Rotary)
        {
            // rotate_half layout: angle i is used by dims i and i + rot/2. Computed in float64, like
            // the references up to float32 rounding of the final cos/sin.
            int half = config.RotaryDim / 2;
            using var scope = NewDisposeScope();
            var inv = pow(config.RopeTheta, -arange(0, half, dtype: ScalarType.Float64) * 2.0 / config.RotaryDim);
            var angles = arange(0, config.ContextLength, dtype: ScalarType.Float64).unsqueeze(1) * inv.unsqueeze(0);
            var both = cat([angles, angles], 1);
            ropeCos = both.cos().to(weights.Embed.dtype).to(weights.Embed.device).MoveToOuterDisposeScope();
            ropeSin = both.sin().to(weights.Embed.dtype).to(weights.Embed.device).MoveToOuterDisposeScope();
            ropeCos.DetachFromDisposeScope();
            ropeSin.DetachFromDisposeScope();
        }
    }

    public ModelConfig Config { get; }
    public TransformerWeights Weights { get; }
    public HookCatalogue Hooks { get; }
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

        var newMask = mask is null ? ones(b, t, ScalarType.Bool, Device) : mask.to(ScalarType.Bool);
        if (!newMask.shape.SequenceEqual(tokens.shape))
            throw new ArgumentException($"attention mask shape [{string.Join(", ", newMask.shape)}] differs from the token shape [{string.Join(", ", tokens.shape)}]");
        // Columns of the cache this forward writes, per row (only needed when rows differ).
        Tensor? columns = uniform ? null
            : tensor(past.Select(p => (long)p).ToArray(), device: Device).view(b, 1) + arange(t, dtype: ScalarType.Int64, device: Device).view(1, t);
        Tensor keyMask;
        if (cache is not null)
        {
            if (columns is null)
                cache.Mask.narrow(1, past0, t).copy_(newMask);
            else
                cache.Mask.scatter_(1, columns, newMask);
            keyMask = cache.Mask.narrow(1, 0, end);
        }
        else
        {
            keyMask = newMask;
        }
        var keyPositions = (keyMask.to(ScalarType.Int64).cumsum(1) - 1).clamp_min(0);
        var positions = columns is null ? keyPositions.narrow(1, past0, t) : keyPositions.gather(1, columns);
        var pastRows = columns is null ? null : columns.narrow(1, 0, 1).squeeze(1);
        var lastReal = (newMask.to(ScalarType.Int64) * arange(t, dtype: ScalarType.Int64, device: Device)).amax([1]);
        lastReal = pastRows is null ? lastReal + past0 : lastReal + pastRows;

        var ctx = new HookContext(Hooks, segments, lastReal, offsets);

        // Attention mask: causal, and keys must be real tokens. A padding query may see itself so
        // that its softmax row is never empty (its output is discarded anyway).
        Tensor? allowed = null;
        bool causalFlag = false;
        if (columns is not null)
        {
            // Rows at different cache lengths: causality is per row.
            var qi = columns.unsqueeze(2);
            var kj = arange(0, end, dtype: ScalarType.Int64, device: Device).view(1, 1, end);
            allowed = kj.le(qi).logical_and(keyMask.unsqueeze(1).logical_or(kj.eq(qi))).unsqueeze(1);
        }
        else if (!keyMask.all().item<bool>() || (past0 > 0 && t > 1) || (past0 == 0 && t > 1 && AnyPatternWanted(ctx)))
        {
            var qi = arange(past0, past0 + t, dtype: ScalarType.Int64, device: Device).view(t, 1);
            var kj = arange(0, end, dtype: ScalarType.Int64, device: Device).view(1, end);
            var causal = kj.le(qi);
            var diagonal = kj.eq(qi);
            allowed = causal.unsqueeze(0).logical_and(keyMask.unsqueeze(1).logical_or(diagonal.unsqueeze(0))).unsqueeze(1);
        }
        else if (past0 == 0 && t > 1)
        {
            causalFlag = true;
        }
        var attention = new AttentionLayout(allowed, causalFlag, past0, columns, end);

        int lastLayer = LastLayerNeeded(ctx, segments, logits);

        Tensor resid;
        using (var scope = NewDisposeScope())
        {
            var embed = Weights.Embed.index_select(0, tokens.reshape(-1)).view(b, t, Config.DModel);
            embed = ctx.Run("hook_embed", embed);
            if (Config.Positional == PositionalKind.Learned)
            {
                var pos = Weights.PosEmbed!.index_select(0, positions.reshape(-1)).view(b, t, Config.DModel);
                pos = ctx.Run("hook_pos_embed", pos);
                resid = embed + pos;
            }
            else
            {
                resid = embed;
            }
            resid.MoveToOuterDisposeScope();
        }
        ctx.Flush();

        Tensor? cos = null, sin = null;
        if (ropeCos is not null)
        {
            cos = ropeCos.index_select(0, positions.reshape(-1)).view(b, t, 1, Config.RotaryDim);
            sin = ropeSin!.index_select(0, positions.reshape(-1)).view(b, t, 1, Config.RotaryDim);
        }

        for (int l = 0; l <= Math.Min(lastLayer, Config.NLayers - 1); l++)
        {
            cancellation.ThrowIfCancellationRequested();
            using (var scope = NewDisposeScope())
            {
                resid = Block(l, resid, ctx, attention, cos, sin, cache);
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
            bool allPositions = logits == LogitsMode.All || ctx.Wants("ln_final.hook_normalized") || ctx.Wants("logits");
            var local = pastRows is null ? lastReal - past0 : lastReal - pastRows;
            var x = allPositions ? resid : GatherPositions(resid, local);
            x = Norm(x, Weights.LnFinalWeight, Weights.LnFinalBias);
            x = ctx.Run("ln_final.hook_normalized", x);
            output = null;
            if (logits != LogitsMode.None || ctx.Wants("logits"))
            {
                if (allPositions && logits == LogitsMode.Last && !ctx.Wants("logits"))
                    x = GatherPositions(x, local);
                var result = F.linear(x, Weights.Unembed);
                result = ctx.Run("logits", result);
                if (logits == LogitsMode.Last && result.shape[1] != 1)
                    result = GatherPositions(result, local);
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

    private static Tensor GatherPositions(Tensor x, Tensor localIndex)
    {
        var index = localIndex.view(-1, 1, 1).expand(x.shape[0], 1, x.shape[2]);
        return x.gather(1, index);
    }

    private Tensor Norm(Tensor x, Tensor weight, Tensor? bias)
    {
        if (Config.Norm == NormKind.LayerNorm)
            return F.layer_norm(x, [x.shape[^1]], weight, bias, Config.NormEps);
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);
        var normed = xf * (xf.pow(2).mean([-1], keepdim: true) + Config.NormEps).rsqrt();
        return weight * (x.dtype == ScalarType.Float32 ? normed : normed.to(x.dtype));
    }

    private Tensor Rope(Tensor x, Tensor cos, Tensor sin)
    {
        int rot = Config.RotaryDim;
        var xr = rot == Config.DHead ? x : x.narrow(-1, 0, rot);
        var halves = xr.chunk(2, -1);
        var rotated = cat([-halves[1], halves[0]], -1);
        var y = xr * cos + rotated * sin;
        return rot == Config.DHead ? y : cat([y, x.narrow(-1, rot, Config.DHead - rot)], -1);
    }

    private Tensor Block(int l, Tensor resid, HookContext ctx, AttentionLayout attention, Tensor? cos, Tensor? sin, KvCache? cache)
    {
        var allowed = attention.Allowed;
        var n = names[l];
        var w = Weights.Blocks[l];
        var c = Config;
        long b = resid.shape[0], t = resid.shape[1];

        resid = ctx.Run(n.ResidPre, resid);
        var ln1 = ctx.Run(n.Ln1Normalized, Norm(resid, w.Ln1Weight, w.Ln1Bias));

        var qkv = F.linear(ln1, w.Qkv, w.QkvBias);
        var parts = qkv.split([(long)c.NHeads * c.DHead, (long)c.NKvHeads * c.DHead, (long)c.NKvHeads * c.DHead], -1);
        // Contiguous q/k/v: kernels then see the same memory layout whether or not a hook replaced
        // the tensor, so a no-op intervention is bit-for-bit a no-op.
        var q = ctx.Run(n.Q, parts[0].contiguous().view(b, t, c.NHeads, c.DHead));
        var k = ctx.Run(n.K, parts[1].contiguous().view(b, t, c.NKvHeads, c.DHead));
        var v = ctx.Run(n.V, parts[2].contiguous().view(b, t, c.NKvHeads, c.DHead));
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
                var index = attention.Columns.view(b, 1, t, 1).expand(b, c.NKvHeads, t, c.DHead);
                cache.Keys[l].scatter_(2, index, kh);
                cache.Values[l].scatter_(2, index, vh);
            }
            kh = cache.Keys[l].narrow(2, 0, attention.End);
            vh = cache.Values[l].narrow(2, 0, attention.End);
        }
        if (c.GroupSize > 1)
        {
            kh = kh.repeat_interleave(c.GroupSize, 1);
            vh = vh.repeat_interleave(c.GroupSize, 1);
        }

        Tensor z;
        if (ctx.Wants(n.AttnScores) || ctx.Wants(n.Pattern))
        {
            var scores = qh.matmul(kh.transpose(-2, -1)) * (1.0 / Math.Sqrt(c.DHead));
            if (allowed is not null)
                scores = scores.masked_fill(allowed.logical_not(), double.NegativeInfinity);
            scores = ctx.Run(n.AttnScores, scores);
            var pattern = scores.softmax(-1);
            pattern = pattern.nan_to_num(0.0);
            pattern = ctx.Run(n.Pattern, pattern);
            z = pattern.matmul(vh);
        }
        else
        {
            z = F.scaled_dot_product_attention(qh, kh, vh, allowed, 0.0, attention.CausalFlag);
        }
        z = ctx.Run(n.Z, z.transpose(1, 2));

        Tensor attnOut;
        if (ctx.Wants(n.Result))
        {
            var result = einsum("bthd,mhd->bthm", z, w.Out.view(c.DModel, c.NHeads, c.DHead));
            result = ctx.Run(n.Result, result);
            attnOut = result.sum(2);
            if (w.OutBias is not null)
                attnOut = attnOut + w.OutBias;
        }
        else
        {
            attnOut = F.linear(z.reshape(b, t, (long)c.NHeads * c.DHead), w.Out, w.OutBias);
        }
        attnOut = ctx.Run(n.AttnOut, attnOut);

        var residMid = ctx.Run(n.ResidMid, resid + attnOut);
        var ln2 = ctx.Run(n.Ln2Normalized, Norm(residMid, w.Ln2Weight, w.Ln2Bias));

        Tensor post;
        if (c.Mlp == MlpKind.GeluTanh)
        {
            var pre = ctx.Run(n.MlpPre, F.linear(ln2, w.MlpIn, w.MlpInBias));
            post = F.gelu(pre, TorchSharp.Modules.GELU.Approximate.tanh, false);
        }
        else
        {
            var gateUp = F.linear(ln2, w.MlpIn, w.MlpInBias).chunk(2, -1);
            // Contiguous halves: vectorised and strided silu differ in the last bit (see q/k/v).
            var gate = ctx.Run(n.MlpPre, gateUp[0].contiguous());
            var up = ctx.Run(n.MlpPreLinear, gateUp[1].contiguous());
            post = F.silu(gate) * up;
        }
        post = ctx.Run(n.MlpPost, post);
        var mlpOut = ctx.Run(n.MlpOut, F.linear(post, w.MlpOut, w.MlpOutBias));
        return ctx.Run(n.ResidPost, residMid + mlpOut);
    }

    public void Dispose()
    {
        Weights.Dispose();
        ropeCos?.Dispose();
        ropeSin?.Dispose();
    }
}

/// <summary>How one forward's queries may attend to keys.</summary>
/// <param name="Allowed">Boolean <c>[batch or 1, 1, query, key]</c> mask, or null when the causal flag (or nothing) suffices.</param>
/// <param name="CausalFlag">Whether scaled-dot-product attention's own causal mask applies.</param>
/// <param name="Past">The cache length shared by every row (when <paramref name="Columns"/> is null).</param>
/// <param name="Columns">Per-row cache columns <c>[batch, pos]</c> of the new tokens when rows differ in cache length.</param>
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
