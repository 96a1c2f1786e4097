using InterpMesh.Contracts.V1;
using TorchSharp;

namespace InterpMesh.Plugins.RetrievalHeads.Retrieval;

/// <summary>What one trial produced.</summary>
internal sealed record TrialResult(Trial Trial, int[] Generated, string GeneratedText, double Recall, bool Recalled, double[,] Hits);

/// <summary>
/// Runs trials with greedy decoding and scores heads as Wu et al. (2024): at each decoding step,
/// for each (query) head, the top-1 attended position of the step's query; when it lies in the
/// needle and holds the token just generated, the head gains 1/(needle length). Only the last
/// query row of each attention pattern is captured (the server selects it), so what is kept per
/// step is layers × heads × context floats: linear in the context length.
/// </summary>
internal static class RetrievalScorer
{
    public static async Task<TrialResult> RunAsync(IModelClient model, ModelInfo info, Trial trial, IEnumerable<Contracts.V1.Intervention> ablation, double threshold, bool score, CancellationToken ct)
    {
        var request = new GenerateRequest { MaxNewTokens = trial.MaxNewTokens, NoDefaultStop = trial.Reference is not null };
        request.Prompts.Add(new Input { Tokens = new TokenIds { Ids = { trial.Prompt } } });
        request.Interventions.AddRange(ablation);
        if (score)
            request.Captures.Add(new Capture { Hooks = { "blocks.*.attn.hook_pattern" }, Positions = new PositionSelection { Last = true } });
        var hits = new double[info.NLayers, info.NHeads];
        var generated = new List<int>();
        var top1 = new Dictionary<int, long[]>();   // layer → top-1 key position per head, for the current step
        await foreach (var output in model.GenerateStepsAsync(request, ct))
        {
            if (output.Activation is { } pattern)
            {
                using (pattern)
                {
                    // [1, head, 1, key]: the step's query row, as float32 whatever dtype was asked for.
                    using var rows = pattern.to(TorchSharp.torch.ScalarType.Float32).contiguous();
                    var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(rows.bytes);
                    int keys = (int)pattern.shape[3];
                    var best = new long[info.NHeads];
                    for (int h = 0; h < info.NHeads; h++)
                    {
                        var row = values.Slice(h * keys, keys);
                        int arg = 0;
                        for (int k = 1; k < keys; k++)
                        {
                            if (row[k] > row[arg])
                                arg = k;
                        }
                        best[h] = arg;
                    }
                    top1[output.Layer!.Value] = best;
                }
                continue;
            }
            var message = output.Tokens!;
            if (message.TokenIds.Count == 0 || message.TokenIds[0] < 0)
                continue;
            int token = message.TokenIds[0];
            generated.Add(token);
            foreach (var (layer, best) in top1)
            {
                for (int h = 0; h < best.Length; h++)
                {
                    long at = best[h];
                    if (at >= trial.NeedleStart && at < trial.NeedleEnd && trial.Prompt[at] == token)
                        hits[layer, h] += 1.0 / (trial.NeedleEnd - trial.NeedleStart);
                }
            }
            top1.Clear();
        }
        // Synthetic trials are scored on token ids (and work on models without a tokenizer).
        string text = trial.Reference is null ? (await model.DetokenizeAsync([[.. generated]], ct))[0] : "";
        double recall = trial.Reference is { } reference ? Rouge.Overlap(reference, [.. generated]) / (double)reference.Length
            : Rouge.Recall(trial.ReferenceWords!, Rouge.Tokens(text, trial.Stem));
        return new TrialResult(trial, [.. generated], text, recall, recall > threshold, hits);
    }
}
