using System.Diagnostics;
using System.Runtime.CompilerServices;
using InterpMesh.Contracts.V1;
using InterpMesh.Jobs;
using InterpMesh.Plugins;

namespace InterpMesh.AnalysisWorker.Models;

/// <summary>
/// The plugin's model client, counting what a run asks of the models for the key's usage: calls
/// (info, tokenize, detokenize, Run, Generate, GetWeights), their time as the worker sees it (a stream from
/// its start to its end, so a plugin that reads slowly adds its own reading time), and the tokens
/// the model ran: a Run's real (unpadded) tokens as its result's attention mask counts them, a
/// Generate's prompt tokens plus every token it produced. Tokenize, detokenize and GetWeights run no model.
/// </summary>
internal sealed class MeteredModelClient(IModelClient inner) : IModelClient
{
    private long calls;
    private long ticks;
    private long tokens;

    public string Name => inner.Name;

    /// <summary>What the run used so far.</summary>
    public JobUsage Used => new(Interlocked.Read(ref calls), Interlocked.Read(ref tokens), TimeSpan.FromTicks(Interlocked.Read(ref ticks)));

    public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) => TimeAsync(() => inner.GetInfoAsync(cancellationToken));

    public Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default) =>
        TimeAsync(() => inner.TokenizeAsync(texts, cancellationToken));

    public Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default) =>
        TimeAsync(() => inner.DetokenizeAsync(tokens, cancellationToken));

    public IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, CancellationToken cancellationToken = default) =>
        TimeStream(inner.RunAsync(request, cancellationToken), output =>
        {
            if (output.Result?.AttentionMask is { } mask)
                Interlocked.Add(ref tokens, RealTokens(mask));
        }, cancellationToken);

    public IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default) =>
        TimeStream(inner.GenerateAsync(request, cancellationToken), step =>
        {
            long n = step.TokenIds.Count(id => id >= 0);
            foreach (var prompt in step.PromptTokens)
                n += prompt.Ids.Count;
            Interlocked.Add(ref tokens, n);
        }, cancellationToken);

    public IAsyncEnumerable<ModelWeight> GetWeightsAsync(IReadOnlyList<string> names, DType dtype = DType.Unspecified, CancellationToken cancellationToken = default) =>
        TimeStream(inner.GetWeightsAsync(names, dtype, cancellationToken), _ => { }, cancellationToken);

    /// <summary>The ones of an attention mask (INT64 0/1, [batch, pos]); a mask of another type counts nothing.</summary>
    internal static long RealTokens(Contracts.V1.Tensor mask)
    {
        if (!Contracts.Tensors.WireTensor.TryFromProto(mask, "attention_mask", out var wire, out _) || wire.DType != DType.Int64)
            return 0;
        long sum = 0;
        foreach (long v in wire.ToInt64())
            sum += v != 0 ? 1 : 0;
        return sum;
    }

    private async Task<T> TimeAsync<T>(Func<Task<T>> call)
    {
        Interlocked.Increment(ref calls);
        long start = Stopwatch.GetTimestamp();
        try
        {
            return await call();
        }
        finally
        {
            Interlocked.Add(ref ticks, Stopwatch.GetElapsedTime(start).Ticks);
        }
    }

    private async IAsyncEnumerable<T> TimeStream<T>(IAsyncEnumerable<T> stream, Action<T> count, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref calls);
        long start = Stopwatch.GetTimestamp();
        try
        {
            await foreach (var item in stream.WithCancellation(cancellationToken))
            {
                count(item);
                yield return item;
            }
        }
        finally
        {
            Interlocked.Add(ref ticks, Stopwatch.GetElapsedTime(start).Ticks);
        }
    }
}
