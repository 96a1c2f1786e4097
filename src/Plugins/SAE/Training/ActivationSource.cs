using InterpMesh.Contracts.V1;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace InterpMesh.Plugins.SAE.Training;

/// <summary>
/// Token activations at one hook from the ModelService stream, one forward per batch of texts
/// (right padding; padding and the BOS position dropped), cycling over the texts.
/// </summary>
internal sealed class ActivationSource(IModelClient model, ModelInfo info, IReadOnlyList<string> texts, string hook, int textsPerForward)
{
    private int next;

    public double SecondsWaiting { get; private set; }

    public async Task<Tensor> NextAsync(CancellationToken ct)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var batch = Enumerable.Range(0, Math.Min(textsPerForward, texts.Count)).Select(i => texts[(next + i) % texts.Count]).ToList();
        next = (next + batch.Count) % texts.Count;
        var tokens = await model.TokenizeAsync(batch, ct);
        var request = new RunRequest { Padding = Contracts.V1.Padding.Right, Captures = { new Capture { Hooks = { hook } } } };
        request.Inputs.AddRange(tokens.Select(t => new Input { Tokens = new TokenIds { Ids = { t.Take(info.ContextLength) } } }));
        Tensor? result = null;
        await foreach (var output in model.RunAsync(request, ct))
        {
            if (output.Activation is not { } a)
                continue;
            using (a)
            {
                int start = info.TokenizerAddsBos ? 1 : 0;
                var rows = new List<Tensor>();
                for (int i = 0; i < batch.Count; i++)
                {
                    int n = Math.Min(tokens[i].Length, info.ContextLength);
                    if (n > start)
                        rows.Add(a[i, start..n].reshape(n - start, -1).to(ScalarType.Float32));
                }
                result = cat(rows, 0).DetachFromDisposeScope();
            }
        }
        SecondsWaiting += clock.Elapsed.TotalSeconds;
        return result ?? throw new InvalidOperationException($"the model service returned no activations for {hook}");
    }
}

/// <summary>Mixes activations across documents: fills to capacity, then serves random batches from the fuller half.</summary>
internal sealed class ShuffleBuffer(ActivationSource source, int capacity, long seed) : IDisposable
{
    private readonly Generator generator = new((ulong)seed);
    private Tensor? buffer;

    public async Task<Tensor> NextBatchAsync(int size, CancellationToken ct)
    {
        if (buffer is null || buffer.shape[0] < Math.Max(size, capacity / 2))
        {
            var parts = buffer is null ? new List<Tensor>() : [buffer];
            long have = buffer?.shape[0] ?? 0;
            while (have < capacity)
            {
                var more = await source.NextAsync(ct);
                parts.Add(more);
                have += more.shape[0];
            }
            var all = cat(parts, 0);
            var mixed = all[randperm(all.shape[0], generator: generator)].DetachFromDisposeScope();
            foreach (var p in parts)
                p.Dispose();
            all.Dispose();
            buffer = mixed;
        }
        var take = buffer[..size].clone().DetachFromDisposeScope();
        var rest = buffer[size..].clone().DetachFromDisposeScope();
        buffer.Dispose();
        buffer = rest;
        return take;
    }

    public void Dispose() => buffer?.Dispose();
}
