using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>The model calls the circuits analyses make, and the metric on the last position's logits.</summary>
internal static class Calls
{
    public static Input Tokens(int[] ids) => new() { Tokens = new TokenIds { Ids = { ids } } };

    /// <summary>Runs a request: the captures (one row each: [batch, ...] as arrays) and the result.</summary>
    public static async Task<(Dictionary<string, Act> Captures, RunResult Result)> RunAsync(IModelClient model, RunRequest request, CancellationToken ct)
    {
        var (tensors, gradients, result) = await RunTensorsAsync(model, request, ct);
        try
        {
            return (tensors.ToDictionary(c => c.Key, c => Act.Of(c.Value), StringComparer.Ordinal), result);
        }
        finally
        {
            foreach (var t in tensors.Values.Concat(gradients.Values))
                t.Dispose();
        }
    }

    /// <summary>
    /// Runs a request and keeps its outputs as tensors [batch, ...] (the caller disposes them):
    /// captures and gradients apart, and the result.
    /// </summary>
    public static async Task<(Dictionary<string, TorchSharp.torch.Tensor> Captures, Dictionary<string, TorchSharp.torch.Tensor> Gradients, RunResult Result)> RunTensorsAsync(IModelClient model, RunRequest request, CancellationToken ct)
    {
        var captures = new Dictionary<string, TorchSharp.torch.Tensor>(StringComparer.Ordinal);
        var gradients = new Dictionary<string, TorchSharp.torch.Tensor>(StringComparer.Ordinal);
        RunResult? result = null;
        try
        {
            await foreach (var output in model.RunAsync(request, ct))
            {
                if (output.Activation is { } t)
                {
                    var into = output.Gradient ? gradients : captures;
                    if (into.Remove(output.Hook!, out var old))
                        old.Dispose();
                    into[output.Hook!] = t;
                }
                else if (output.Result is { } r)
                {
                    result = r;
                }
            }
            return (captures, gradients, result ?? throw new InvalidOperationException("the model service sent no result"));
        }
        catch
        {
            foreach (var t in captures.Values.Concat(gradients.Values))
                t.Dispose();
            throw;
        }
    }

    /// <summary>Logits [rows][vocab] of a LAST-mode result.</summary>
    public static float[][] LastLogits(RunResult result) =>
        result.Logits is { } logits ? WireTensor.FromProto(logits, "logits").ToFloat32Rows()
            : throw new InvalidOperationException("the model service sent no logits");

    /// <summary>The metric of one row's last-position logits.</summary>
    public static double Metric(float[] logits, int answer, int wrong, CircuitMetric metric)
    {
        if (metric == CircuitMetric.LogitDiff)
            return (double)logits[answer] - logits[wrong];
        double logp = LogProb(logits, answer);
        return metric == CircuitMetric.Prob ? Math.Exp(logp) : -logp;
    }

    public static double LogProb(float[] logits, int token)
    {
        double max = double.MinValue;
        foreach (var v in logits)
            max = Math.Max(max, v);
        double sum = 0;
        foreach (var v in logits)
            sum += Math.Exp(v - max);
        return logits[token] - (max + Math.Log(sum));
    }

    /// <summary>(m − m_corrupt) / (m_clean − m_corrupt); NaN when clean and corrupted do not differ.</summary>
    public static double Normalise(double m, double clean, double corrupt) =>
        Math.Abs(clean - corrupt) < 1e-12 ? double.NaN : (m - corrupt) / (clean - corrupt);

    /// <summary>Bytes of one row's float32 capture of a hook for a sequence of <paramref name="length"/> tokens.</summary>
    public static long RowBytes(ModelInfo info, string hook, int length)
    {
        var h = info.Hooks.FirstOrDefault(x => x.Name == hook) ?? throw new InvalidParametersException($"this model has no hook '{hook}'");
        long n = 4;
        foreach (var d in h.Dims)
        {
            n *= d switch
            {
                "batch" => 1,
                "pos" or "query_pos" or "key_pos" => length,
                "head" => info.NHeads,
                "kv_head" => info.NKvHeads > 0 ? info.NKvHeads : info.NHeads,
                "d_head" => info.DHead,
                "d_model" => info.DModel,
                "d_mlp" => info.DMlp,
                "d_vocab" => info.VocabSize,
                _ => long.TryParse(d, out var k) ? k : 1,
            };
        }
        return n;
    }

    /// <summary>Bytes of logits one Run result may carry: under the 16 MiB gRPC message limit of the SDK's channels.</summary>
    public const long MaxLogitBytes = 12L << 20;

    /// <summary>Rows per Run whose float32 logits at <paramref name="positions"/> positions fit one result message (at least 1).</summary>
    public static int LogitRows(ModelInfo info, int positions = 1) =>
        (int)Math.Clamp(MaxLogitBytes / Math.Max(1L, 4L * info.VocabSize * positions), 1, int.MaxValue);

    /// <summary>Rows per Run that keep a capture of <paramref name="hooks"/> within the server's budget and max_batch.</summary>
    public static int RowsPerRun(ModelInfo info, IReadOnlyCollection<string> hooks, int length, int maxBatch)
    {
        if (hooks.Count == 0)
            return maxBatch;
        long perRow = hooks.Sum(h => RowBytes(info, h, length));
        long budget = info.Limits is { MaxCaptureBytes: > 0 } l ? l.MaxCaptureBytes : long.MaxValue;
        if (perRow > budget)
            throw new InvalidParametersException($"one prompt of {length} tokens needs {perRow:N0} bytes of captures, over the server's budget of {budget:N0}; use shorter prompts or fewer layers");
        return (int)Math.Max(1, Math.Min(maxBatch, budget / perRow));
    }
}

/// <summary>The clean and corrupted runs of every pair: their metrics, and captures of the hooks asked for.</summary>
internal sealed class Baseline
{
    public required double[] Clean { get; init; }

    public required double[] Corrupt { get; init; }

    /// <summary>Per pair, hook → activation of that row (batch dimension dropped).</summary>
    public required Dictionary<string, Act>[] CleanActs { get; init; }

    public required Dictionary<string, Act>[] CorruptActs { get; init; }

    public double CleanMean => Clean.Average();

    public double CorruptMean => Corrupt.Average();

    /// <summary>
    /// Runs every pair's clean and corrupted prompt (pairs of one length per Run, within max_batch and
    /// the capture budget), capturing <paramref name="hooks"/> at every position on both.
    /// </summary>
    public static async Task<Baseline> RunAsync(PairSet set, CircuitMetric metric, IReadOnlyList<string> hooks, IAnalysisContext context)
    {
        int n = set.Pairs.Count;
        var clean = new double[n];
        var corrupt = new double[n];
        var cleanActs = new Dictionary<string, Act>[n];
        var corruptActs = new Dictionary<string, Act>[n];
        foreach (var group in set.Pairs.GroupBy(p => p.Length))
        {
            var pairs = group.ToList();
            int perRun = Math.Max(1, Math.Min(Calls.RowsPerRun(set.Info, hooks, group.Key, set.MaxBatch), Calls.LogitRows(set.Info)) / 2);
            for (int start = 0; start < pairs.Count; start += perRun)
            {
                var chunk = pairs.Skip(start).Take(perRun).ToList();
                var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                request.Inputs.AddRange(chunk.Select(p => Calls.Tokens(p.Clean)));
                request.Inputs.AddRange(chunk.Select(p => Calls.Tokens(p.Corrupted)));
                if (hooks.Count > 0)
                    request.Captures.Add(new Capture { Hooks = { hooks }, Positions = new PositionSelection { All = true } });
                var (captures, result) = await Calls.RunAsync(context.Model, request, context.Cancellation);
                var logits = Calls.LastLogits(result);
                for (int i = 0; i < chunk.Count; i++)
                {
                    var p = chunk[i];
                    clean[p.Index] = Calls.Metric(logits[i], p.Answer, p.Wrong, metric);
                    corrupt[p.Index] = Calls.Metric(logits[chunk.Count + i], p.Answer, p.Wrong, metric);
                    cleanActs[p.Index] = captures.ToDictionary(c => c.Key, c => c.Value.Select(0, i), StringComparer.Ordinal);
                    corruptActs[p.Index] = captures.ToDictionary(c => c.Key, c => c.Value.Select(0, chunk.Count + i), StringComparer.Ordinal);
                }
            }
        }
        return new Baseline { Clean = clean, Corrupt = corrupt, CleanActs = cleanActs, CorruptActs = corruptActs };
    }
}
