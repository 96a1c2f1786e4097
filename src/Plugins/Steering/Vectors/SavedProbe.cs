using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins.Steering.Vectors;

/// <summary>
/// A probe saved by the probing plugin (artifact kind <c>interpmesh.probe</c>: weight [k, d], bias,
/// mean, std, optional neurons; metadata hook, position, classes), used as a behaviour classifier:
/// P(class) of texts from activations at the probe's hook and position.
/// </summary>
internal sealed class SavedProbe
{
    private readonly float[][] weights;
    private readonly float[] bias, mean, std;
    private readonly long[]? neurons;
    private readonly string hook, position;
    private readonly int classIndex, classes;

    private SavedProbe(float[][] weights, float[] bias, float[] mean, float[] std, long[]? neurons, string hook, string position, int classIndex, int classes)
    {
        (this.weights, this.bias, this.mean, this.std, this.neurons, this.hook, this.position, this.classIndex, this.classes) = (weights, bias, mean, std, neurons, hook, position, classIndex, classes);
    }

    public static async Task<SavedProbe> LoadAsync(IArtifactStore artifacts, string name, string className, CancellationToken ct)
    {
        var info = await artifacts.FindAsync(name, ct) ?? throw new InvalidParametersException($"classifier.probe: there is no artifact '{name}'");
        if (info.Metadata["kind"]?.GetValue<string>() != "interpmesh.probe")
            throw new InvalidParametersException($"classifier.probe: '{name}' is not a probe saved by the probing plugin");
        var classes = info.Metadata["classes"]!.AsArray().Select(c => c!.GetValue<string>()).ToList();
        int index = classes.IndexOf(className);
        if (index < 0)
            throw new InvalidParametersException($"classifier.class '{className}' is not one of the probe's classes ({string.Join(", ", classes)})");
        string position = info.Metadata["position"]!.GetValue<string>();
        if (position != "last")
            throw new InvalidParametersException($"classifier.probe reads position '{position}'; the sweep can use probes trained on the last token");
        var t = await artifacts.LoadTensorsAsync(name, ct);
        try
        {
            float[] F(string k) => t[k].to(torch.ScalarType.Float32).data<float>().ToArray();
            var w = t["weight"].to(torch.ScalarType.Float32);
            return new SavedProbe([.. Enumerable.Range(0, (int)w.shape[0]).Select(i => w[i].data<float>().ToArray())], F("bias"), F("mean"), F("std"),
                t.TryGetValue("neurons", out var n) ? n.data<long>().ToArray() : null, info.Metadata["hook"]!.GetValue<string>(), position, index, classes.Count);
        }
        finally
        {
            foreach (var x in t.Values)
                x.Dispose();
        }
    }

    /// <summary>P(the chosen class) for each token sequence (prompt + generation).</summary>
    public async Task<double[]> ProbabilitiesAsync(IModelClient model, IReadOnlyList<int[]> sequences, CancellationToken ct)
    {
        var inputs = sequences.Select(s => new Input { Tokens = new TokenIds { Ids = { s } } }).ToList();
        var features = (await ModelCalls.LastTokenAsync(model, inputs, [hook], 32, ct))[hook];
        return [.. features.Select(x =>
        {
            var z = mean.Select((m, j) => ((neurons is null ? x[j] : x[neurons[j]]) - m) / (double)std[j]).ToArray();
            var p = weights.Select((w, k) => 1 / (1 + Math.Exp(-(w.Select((v, j) => v * z[j]).Sum() + bias[k])))).ToArray();
            if (classes == 2)
                return classIndex == 1 ? p[0] : 1 - p[0];
            return p[classIndex] / Math.Max(1e-300, p.Sum());
        })];
    }
}
