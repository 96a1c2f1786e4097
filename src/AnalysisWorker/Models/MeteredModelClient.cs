using System.Diagnostics;
using System.Runtime.CompilerServices;
using InterpMesh.Contracts.V1;
using InterpMesh.Jobs;
using InterpMesh.Plugins;

namespace InterpMesh.AnalysisWorker.Models;

/// <summary>
/// The plugin's model client, counting what a run asks of the models for the key's usage: calls
/// (info, tokenize, detokenize, Run, Generate) and their time as the worker sees it (a stream from
/// its start to its end, so a plugin that reads slowly adds its own reading time). Tokens are not
/// counted yet: the worker does not see how a text request tokenizes.
/// </summary>
internal sealed class MeteredModelClient(IModelClient inner) : IModelClient
{
    private long calls;
    private long ticks;

    public string Name => inner.Name;

    /// <summary>What the run used so far.</summary>
    public JobUsage Used => new(Interlocked.Read(ref calls), 0, TimeSpan.FromTicks(Interlocked.Read(ref ticks)));

    public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) => TimeAsync(() => inner.GetInfoAsync(cancellationToken));

    public Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default) =>
        TimeAsync(() => inner.TokenizeAsync(texts, cancellationToken));

    public Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default) =>
        TimeAsync(() => inner.DetokenizeAsync(tokens, cancellationToken));

    public IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, CancellationToken cancellationToken = default) =>
        TimeStream(inner.RunAsync(request, cancellationToken), cancellationToken);

    public IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default) =>
        TimeStream(inner.GenerateAsync(request, cancellationToken), cancellationToken);

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

    private async IAsyncEnumerable<T> TimeStream<T>(IAsyncEnumerable<T> stream, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref calls);
        long start = Stopwatch.GetTimestamp();
        try
        {
            await foreach (var item in stream.WithCancellation(cancellationToken))
                yield return item;
        }
        finally
        {
            Interlocked.Add(ref ticks, Stopwatch.GetElapsedTime(start).Ticks);
        }
    }
}
