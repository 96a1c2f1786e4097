using System.Text;
using System.Text.Json;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.Circuits;

/// <summary>One prompt pair, tokenised and checked.</summary>
/// <param name="Field">How errors name the pair, e.g. <c>pairs[2]</c>.</param>
internal sealed record Pair(int Index, string Field, int[] Clean, int[] Corrupted, int Answer, int Wrong)
{
    public int Length => Clean.Length;
}

/// <summary>The prompt pairs of a run, tokenised, with the model's description.</summary>
internal sealed class PairSet
{
    public required IReadOnlyList<Pair> Pairs { get; init; }

    public required ModelInfo Info { get; init; }

    /// <summary>Most inputs one Run may carry (the server's max_batch).</summary>
    public int MaxBatch => Info.Limits is { MaxBatch: > 0 } l ? l.MaxBatch : 64;

    /// <summary>The shared length of every pair, or an error naming the first pair that differs.</summary>
    public int CommonLength(string why)
    {
        var first = Pairs[0];
        foreach (var p in Pairs)
        {
            if (p.Length != first.Length)
                throw new InvalidParametersException($"{p.Field}: {p.Length} tokens, but {first.Field} has {first.Length}; {why}, so every pair must have the same token length");
        }
        return first.Length;
    }

    /// <summary>
    /// Reads the pairs (inline or from the artifact), tokenises them and checks them: every field
    /// present, clean and corrupted of the same token length (unless <paramref name="needCorrupted"/>
    /// is false), answer and wrong single tokens (wrong only when <paramref name="needWrong"/>).
    /// </summary>
    public static async Task<PairSet> LoadAsync(CircuitsParameters p, IAnalysisContext context, bool needCorrupted = true, bool needWrong = true)
    {
        var ct = context.Cancellation;
        var info = await context.Model.GetInfoAsync(ct);
        var (raw, prefix) = await ReadAsync(p, context);
        if (raw.Count == 0)
            throw new InvalidParametersException(p.PairsArtifact is null ? "pairs is empty; give at least one {clean, corrupted, answer, wrong} pair" : $"pairs_artifact '{p.PairsArtifact}' holds no pairs");
        string F(int i) => prefix(i);
        for (int i = 0; i < raw.Count; i++)
        {
            var r = raw[i];
            if (string.IsNullOrEmpty(r.Clean))
                throw new InvalidParametersException($"{F(i)}.clean is missing or empty");
            if (needCorrupted && string.IsNullOrEmpty(r.Corrupted))
                throw new InvalidParametersException($"{F(i)}.corrupted is missing or empty");
            if (string.IsNullOrEmpty(r.Answer))
                throw new InvalidParametersException($"{F(i)}.answer is missing or empty");
            if (needWrong && string.IsNullOrEmpty(r.Wrong))
                throw new InvalidParametersException($"{F(i)}.wrong is missing or empty");
        }
        var texts = new List<string>();
        foreach (var r in raw)
            texts.AddRange([r.Clean!, r.Corrupted ?? r.Clean!, r.Answer!, r.Wrong ?? r.Answer!]);
        var ids = await context.Model.TokenizeAsync(texts, ct);
        int? bos = info.BosTokenId;
        int Single(int[] t, string field, string text)
        {
            var body = bos is int b && t.Length > 0 && t[0] == b ? t[1..] : t;
            return body.Length == 1 ? body[0]
                : throw new InvalidParametersException($"{field} {Quote(text)} is {body.Length} tokens; give a single token (for GPT-2 style tokenizers, with its leading space)");
        }
        var pairs = new List<Pair>();
        for (int i = 0; i < raw.Count; i++)
        {
            int[] clean = ids[4 * i], corrupted = ids[4 * i + 1];
            if (needCorrupted && clean.Length != corrupted.Length)
                throw new InvalidParametersException($"{F(i)}: clean has {clean.Length} tokens, corrupted {corrupted.Length}; a pair must tokenise to the same length so that positions line up (change the corrupted prompt)");
            if (clean.Length > info.ContextLength)
                throw new InvalidParametersException($"{F(i)}.clean has {clean.Length} tokens, more than the model's context of {info.ContextLength}");
            int answer = Single(ids[4 * i + 2], $"{F(i)}.answer", raw[i].Answer!);
            int wrong = needWrong ? Single(ids[4 * i + 3], $"{F(i)}.wrong", raw[i].Wrong!) : answer;
            if (needWrong && answer == wrong)
                throw new InvalidParametersException($"{F(i)}: answer and wrong are the same token; the logit difference needs two different tokens");
            pairs.Add(new Pair(i, F(i), clean, corrupted, answer, wrong));
        }
        return new PairSet { Pairs = pairs, Info = info };
    }

    private static string Quote(string s) => JsonSerializer.Serialize(s.Length > 40 ? s[..40] + "…" : s);

    private static async Task<(List<PromptPair> Pairs, Func<int, string> Field)> ReadAsync(CircuitsParameters p, IAnalysisContext context)
    {
        if (p.Pairs is not null && p.PairsArtifact is not null)
            throw new InvalidParametersException("give pairs or pairs_artifact, not both");
        if (p.Pairs is { } inline)
            return ([.. inline.Select(x => x ?? new PromptPair())], i => $"pairs[{i}]");
        if (p.PairsArtifact is not { } name)
            throw new InvalidParametersException("pairs is required: a list of {clean, corrupted, answer, wrong} objects (or pairs_artifact: an artifact with a JSONL file of them)");
        if (await context.Artifacts.FindAsync(name, context.Cancellation) is null)
            throw new InvalidParametersException($"pairs_artifact: there is no artifact '{(name.Length > 80 ? name[..80] + "…" : name)}'");
        var files = await context.Artifacts.LoadFilesAsync(name, context.Cancellation);
        var jsonl = files.Where(f => f.Key.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase)).ToList();
        byte[] data = files.TryGetValue("pairs.jsonl", out var named) ? named
            : jsonl.Count == 1 ? jsonl[0].Value
            : throw new InvalidParametersException($"pairs_artifact '{name}' has {(jsonl.Count == 0 ? "no .jsonl file" : $"{jsonl.Count} .jsonl files and none named pairs.jsonl")}; save the pairs as pairs.jsonl, one JSON object per line");
        var list = new List<PromptPair>();
        var lines = new List<int>();
        int lineNo = 0;
        foreach (var line in Encoding.UTF8.GetString(data).Split('\n'))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line))
                continue;
            try
            {
                list.Add(JsonSerializer.Deserialize<PromptPair>(line, PluginParameters.Options) ?? throw new JsonException("null"));
            }
            catch (JsonException)
            {
                throw new InvalidParametersException($"pairs_artifact '{name}' line {lineNo}: not a JSON object with clean, corrupted, answer and wrong (strings)");
            }
            lines.Add(lineNo);
        }
        return (list, i => $"pairs_artifact '{name}' line {lines[i]}");
    }
}
