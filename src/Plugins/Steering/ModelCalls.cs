using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins.Steering;

/// <summary>The model calls the steering analyses make, batched: one forward per batch of prompts.</summary>
internal static class ModelCalls
{
    /// <summary>Last-token activations [prompt][d] of each hook, one Run per batch.</summary>
    public static Task<Dictionary<string, float[][]>> LastTokenAsync(IModelClient model, IReadOnlyList<string> texts, IReadOnlyList<string> hooks, int batch, CancellationToken ct) =>
        LastTokenAsync(model, [.. texts.Select(t => new Input { Text = t })], hooks, batch, ct);

    /// <summary>Same, for inputs given as token ids (or texts).</summary>
    public static async Task<Dictionary<string, float[][]>> LastTokenAsync(IModelClient model, IReadOnlyList<Input> inputs, IReadOnlyList<string> hooks, int batch, CancellationToken ct)
    {
        var result = hooks.ToDictionary(h => h, _ => new float[inputs.Count][]);
        for (int start = 0; start < inputs.Count; start += batch)
        {
            int n = Math.Min(batch, inputs.Count - start);
            var request = new RunRequest { Captures = { new Capture { Hooks = { hooks }, Positions = new PositionSelection { Last = true } } } };
            for (int i = 0; i < n; i++)
                request.Inputs.Add(inputs[start + i]);
            await foreach (var output in model.RunAsync(request, ct))
            {
                if (output.Activation is not { } t)
                    continue;
                using (t)
                using (var f = t.to(torch.ScalarType.Float32).reshape(n, -1))
                {
                    for (int i = 0; i < n; i++)
                        result[output.Hook!][start + i] = f[i].data<float>().ToArray();
                }
            }
        }
        return result;
    }

    /// <summary>Last-position log-probabilities [prompt][vocab] under the given interventions (left padding: the last position is shared).</summary>
    public static async Task<float[][]> LastLogProbsAsync(IModelClient model, IReadOnlyList<string> texts, IEnumerable<Contracts.V1.Intervention> interventions, CancellationToken ct)
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        request.Inputs.AddRange(texts.Select(t => new Input { Text = t }));
        request.Interventions.AddRange(interventions);
        float[][]? result = null;
        await foreach (var output in model.RunAsync(request, ct))
        {
            if (output.Result is { Logits: { } logits })
            {
                var rows = WireTensor.FromProto(logits, "logits").ToFloat32Rows();
                result = [.. Enumerable.Range(0, texts.Count).Select(i =>
                {
                    var row = rows[i];
                    float max = float.MinValue;
                    foreach (var v in row)
                        max = Math.Max(max, v);
                    double sum = 0;
                    foreach (var v in row)
                        sum += Math.Exp(v - max);
                    float log = (float)(max + Math.Log(sum));
                    return row.ToArray().Select(v => v - log).ToArray();
                })];
            }
        }
        return result ?? throw new InvalidOperationException("the model service sent no logits");
    }

    /// <summary>Padded length of a batch (left padding): the index of the shared last position + 1.</summary>
    public static async Task<int> PaddedLengthAsync(IModelClient model, IReadOnlyList<string> texts, CancellationToken ct) =>
        (await model.TokenizeAsync(texts, ct)).Max(t => t.Length);

    public static Contracts.V1.Tensor Wire(float[] v, float scale = 1)
        => WireTensor.FromFloat32(v.Select(x => x * scale).ToArray()).ToProto();
}
