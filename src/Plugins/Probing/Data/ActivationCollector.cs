using System.Text.RegularExpressions;
using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins.Probing.Data;

/// <summary>
/// One feature vector per example and hook, from the model's activation stream (each forward is
/// run once for all hooks; nothing is recomputed per probe). Position rules: <c>last</c> (the last
/// token, selected by the server), <c>target</c> (the row's target token), <c>mean</c> (mean over
/// the row's tokens, padding excluded), <c>max</c> (per feature, the largest value over the row's
/// tokens, padding excluded: Gurnee et al.'s <c>max</c> aggregation). Per-head hooks are flattened to head × d_head features.
/// </summary>
internal static class ActivationCollector
{
    public static readonly string[] Positions = ["last", "target", "mean", "max"];

    public static async Task<(List<string> Hooks, Dictionary<string, float[][]> Features)> CollectAsync(
        IModelClient model, ModelInfo info, IReadOnlyList<ProbingRow> rows, IReadOnlyList<string> globs, string position, int batchSize,
        Action<int> progress, CancellationToken ct)
    {
        var hooks = Resolve(info, globs);
        var tokens = await model.TokenizeAsync([.. rows.Select(r => r.Text)], ct);
        var targets = new int[rows.Count];
        if (position == "target")
        {
            var spanRows = Enumerable.Range(0, rows.Count).Where(i => rows[i].TargetIndex is null).ToList();
            var prefixes = spanRows.Count == 0 ? [] : await model.TokenizeAsync([.. spanRows.Select(i => rows[i].TargetSpan is { } s ? rows[i].Text[..s.End]
                : throw new InvalidParametersException($"row {i} has neither target_index nor target_span, which position 'target' needs"))], ct);
            for (int k = 0; k < spanRows.Count; k++)
                targets[spanRows[k]] = prefixes[k].Length - 1;
            for (int i = 0; i < rows.Count; i++)
            {
                if (rows[i].TargetIndex is int t)
                    targets[i] = t;
                if (targets[i] < 0 || targets[i] >= tokens[i].Length)
                    throw new InvalidParametersException($"row {i}: target token {targets[i]} is outside its {tokens[i].Length} tokens (indices count the tokenizer's BOS when it adds one)");
            }
        }
        for (int i = 0; i < rows.Count; i++)
        {
            if (tokens[i].Length > info.ContextLength)
                throw new InvalidParametersException($"row {i} has {tokens[i].Length} tokens, more than the model's context of {info.ContextLength}");
        }

        var features = hooks.ToDictionary(h => h, _ => new float[rows.Count][]);
        for (int start = 0; start < rows.Count; start += batchSize)
        {
            ct.ThrowIfCancellationRequested();
            int n = Math.Min(batchSize, rows.Count - start);
            var request = new RunRequest { Padding = Contracts.V1.Padding.Right };
            for (int i = 0; i < n; i++)
                request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { tokens[start + i] } } });
            var capture = new Contracts.V1.Capture { Hooks = { hooks } };
            if (position == "last")
                capture.Positions = new PositionSelection { Last = true };
            request.Captures.Add(capture);
            await foreach (var output in model.RunAsync(request, ct))
            {
                if (output.Activation is not { } activation)
                    continue;
                using (activation)
                using (var x = activation.to(torch.ScalarType.Float32))
                {
                    var flat = x.reshape(x.shape[0], x.shape[1], -1);
                    for (int i = 0; i < n; i++)
                    {
                        int row = start + i;
                        using var v = position switch
                        {
                            "last" => flat[i, 0],
                            "target" => flat[i, targets[row]],
                            "max" => flat[i, ..tokens[row].Length].amax([0]),
                            _ => flat[i, ..tokens[row].Length].mean([0]),
                        };
                        features[output.Hook!][row] = v.contiguous().data<float>().ToArray();
                    }
                }
            }
            progress(start + n);
        }
        return (hooks, features);
    }

    /// <summary>Hooks matching the globs, in forward order; attention-map hooks cannot be probed.</summary>
    private static List<string> Resolve(ModelInfo info, IReadOnlyList<string> globs)
    {
        var found = new List<string>();
        foreach (var glob in globs)
        {
            var pattern = new Regex("^" + Regex.Escape(glob).Replace("\\*", ".*").Replace("\\?", ".") + "$");
            var matched = info.Hooks.Where(h => pattern.IsMatch(h.Name)).ToList();
            if (matched.Count == 0)
            {
                var near = info.Hooks.Select(h => h.Name).OrderBy(h => Distance(h, glob)).Take(3);
                throw new InvalidParametersException($"hook '{glob}' matches no hook of this model; closest: {string.Join(", ", near)}");
            }
            foreach (var h in matched)
            {
                if (h.Dims.Contains("key_pos"))
                    throw new InvalidParametersException($"hook '{h.Name}' is an attention map ({h.Shape}); probe positional hooks such as hook_resid_post or mlp.hook_post");
                if (!found.Contains(h.Name))
                    found.Add(h.Name);
            }
        }
        var order = info.Hooks.Select((h, i) => (h.Name, i)).ToDictionary(p => p.Name, p => p.i);
        return [.. found.OrderBy(h => order[h])];
    }

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
