using InterpMesh.Contracts.V1;

namespace InterpMesh.Plugins.RetrievalHeads.Retrieval;

/// <summary>One needle-in-a-haystack trial: the prompt, where the needle sits in it, and what recalling it means.</summary>
/// <param name="Prompt">Token ids given to the model (context + question).</param>
/// <param name="NeedleStart">First token of the needle in the prompt.</param>
/// <param name="NeedleEnd">One past its last token.</param>
/// <param name="ContextTokens">The grid's context length (prompt tokens).</param>
/// <param name="Depth">The grid's needle depth, percent.</param>
/// <param name="MaxNewTokens">Tokens to decode.</param>
/// <param name="Reference">What the answer should contain: token ids (synthetic) …</param>
/// <param name="ReferenceWords">… or words (text trials: the answer's ROUGE-1 words).</param>
/// <param name="Stem">Whether ROUGE-1 stems words (text trials).</param>
internal sealed record Trial(int[] Prompt, int NeedleStart, int NeedleEnd, int ContextTokens, double Depth, int MaxNewTokens, int[]? Reference, string[]? ReferenceWords, bool Stem = true);

/// <summary>
/// Builds the grid of trials. <b>Synthetic</b> (models that cannot read English, e.g. the toy
/// models): key–value recall — <c>bos k₁ v₁ … kₚ vₚ sep kᵢ</c> → <c>vᵢ</c>; the needle is the
/// value token vᵢ (the fact; its key is the address the question uses), its depth is the pair's
/// place among the pairs, the context length is the number of pairs. <b>Text</b>: the caller's
/// needle inserted into the caller's haystack at a depth (percent of the context, at a word
/// boundary), truncated to each context length in tokens, followed by the question. As Wu et al.,
/// the scored span is the <c>answer</c> (their <c>real_needle</c>; default the whole needle), found
/// in the prompt as the first window of its token length whose token set covers more than 90 % of
/// the answer's, and recall is ROUGE-1 against the answer.
/// </summary>
internal static class Trials
{
    public static async Task<List<Trial>> BuildAsync(RetrievalHeadsParameters p, IModelClient model, ModelInfo info, CancellationToken ct)
    {
        var depths = p.Depths.ToList();
        foreach (var depth in depths)
        {
            if (depth is < 0 or > 100)
                throw new InvalidParametersException($"depth {depth} is outside 0–100 (percent of the context before the needle)");
        }
        return p.Text is { } text
            ? await TextTrialsAsync(text, model, info, depths, ct)
            : await SyntheticTrialsAsync(p.Synthetic ?? new SyntheticTrials(), model, info, depths, p.TrialsPerCell, p.Seed, ct);
    }

    private static int[] StripBos(int[] ids, ModelInfo info) => info.BosTokenId is int bos && ids.Length > 0 && ids[0] == bos ? ids[1..] : ids;

    private static async Task<List<Trial>> SyntheticTrialsAsync(SyntheticTrials syn, IModelClient model, ModelInfo info, List<double> depths, int perCell, int seed, CancellationToken ct)
    {
        var rng = new Random(seed);
        async Task<int[]?> Single(string field, IReadOnlyList<string>? list)
        {
            if (list is null)
                return null;
            var words = list.ToList();
            var tokens = await model.TokenizeAsync(words, ct);
            return [.. words.Select((w, i) => StripBos(tokens[i], info) is [var one] ? one
                : throw new InvalidParametersException($"synthetic.{field}: '{w}' is {StripBos(tokens[i], info).Length} tokens, not one"))];
        }
        var pairCounts = syn.Pairs.ToList();
        if (pairCounts.Count == 0 || pairCounts.Any(n => n < 1))
            throw new InvalidParametersException("synthetic.pairs: give one or more pair counts of at least 1");
        int maxPairs = pairCounts.Max();
        var keys = await Single("keys", syn.Keys);
        var values = await Single("values", syn.Values);
        var separator = await Single("separator", syn.Separator);
        if (keys is null || values is null)
        {
            // Any model: distinct random token ids (never BOS/EOS) as keys and values.
            var pool = Enumerable.Range(0, info.VocabSize).Where(i => i != info.BosTokenId && i != info.EosTokenId).OrderBy(_ => rng.Next()).ToList();
            if (pool.Count < 2 * maxPairs + 1)
                throw new InvalidParametersException($"the vocabulary has {pool.Count} usable tokens, too few for {maxPairs} pairs");
            keys ??= [.. pool.Take(maxPairs)];
            values ??= [.. pool.Skip(maxPairs).Take(maxPairs)];
            separator ??= [pool[2 * maxPairs]];
        }
        if (keys.Length < maxPairs)
            throw new InvalidParametersException($"synthetic.keys has {keys.Length} keys; {maxPairs} pairs need as many distinct keys");
        var trials = new List<Trial>();
        foreach (int pairs in pairCounts)
        {
            foreach (double depth in depths)
            {
                for (int k = 0; k < perCell; k++)
                {
                    var ks = keys.OrderBy(_ => rng.Next()).Take(pairs).ToArray();
                    var vs = Enumerable.Range(0, pairs).Select(_ => values[rng.Next(values.Length)]).ToArray();
                    int target = (int)Math.Round(depth / 100 * (pairs - 1));
                    var prompt = new List<int>();
                    if (info.BosTokenId is int bos)
                        prompt.Add(bos);
                    int needle = 0;
                    for (int i = 0; i < pairs; i++)
                    {
                        prompt.Add(ks[i]);
                        if (i == target)
                            needle = prompt.Count;
                        prompt.Add(vs[i]);
                    }
                    prompt.AddRange(separator ?? []);
                    prompt.Add(ks[target]);
                    if (prompt.Count + 1 > info.ContextLength)
                        throw new InvalidParametersException($"{pairs} pairs make a prompt of {prompt.Count} tokens plus the answer, longer than the model's context of {info.ContextLength}");
                    trials.Add(new Trial([.. prompt], needle, needle + 1, pairs, depth, 1, [vs[target]], null));
                }
            }
        }
        return trials;
    }

    private static async Task<List<Trial>> TextTrialsAsync(TextTrials text, IModelClient model, ModelInfo info, List<double> depths, CancellationToken ct)
    {
        static string Need(string f, string value) => value is { Length: > 0 } ? value : throw new InvalidParametersException($"text.{f} is required");
        string needle = Need("needle", text.Needle), question = Need("question", text.Question), haystack = Need("haystack", text.Haystack);
        string answer = text.Answer ?? needle;
        if (answer.Length == 0)
            throw new InvalidParametersException("text.answer is empty; give the part of the needle that answers the question, or leave it out to score the whole needle");
        if (!needle.Contains(answer, StringComparison.Ordinal))
            throw new InvalidParametersException($"text.answer '{Quote(answer)}' is not part of text.needle; the answer is the span of the needle that answers the question");
        var lengths = text.Lengths?.ToList() ?? [info.ContextLength / 2, info.ContextLength];
        var tokenized = await model.TokenizeAsync([haystack, needle, question, answer, " " + answer], ct);
        var hay = StripBos(tokenized[0], info);
        var needleTokens = StripBos(tokenized[1], info);
        var questionTokens = StripBos(tokenized[2], info);
        int[][] answerForms = [StripBos(tokenized[3], info), StripBos(tokenized[4], info)];
        var answerWords = Rouge.Tokens(answer, text.Stem);
        if (answerWords.Length == 0)
            throw new InvalidParametersException($"text.answer '{Quote(answer)}' has no letters or digits, so ROUGE-1 recall cannot be measured against it");
        int answerTokens = text.MaxNewTokens ?? answerForms[0].Length + 4;
        var trials = new List<Trial>();
        foreach (int length in lengths)
        {
            if (length + answerTokens > info.ContextLength)
                throw new InvalidParametersException($"context length {length} plus {answerTokens} answer tokens is longer than the model's context of {info.ContextLength}");
            int budget = length - questionTokens.Length - needleTokens.Length - (info.BosTokenId is null ? 0 : 1);
            if (budget < 1)
                throw new InvalidParametersException($"context length {length} leaves no room for haystack around a {needleTokens.Length}-token needle and a {questionTokens.Length}-token question");
            var filler = Enumerable.Range(0, budget).Select(i => hay[i % hay.Length]).ToArray();
            string fillerText = (await model.DetokenizeAsync([filler], ct))[0];
            foreach (double depth in depths)
            {
                // Insert at the word boundary nearest the depth.
                int at = (int)Math.Round(depth / 100 * fillerText.Length);
                while (at > 0 && at < fillerText.Length && fillerText[at - 1] != ' ')
                    at--;
                string context = fillerText[..at] + (at > 0 && fillerText[at - 1] != ' ' ? " " : "") + needle + " " + fillerText[at..];
                var prompt = StripBos((await model.TokenizeAsync([context + " " + question], ct))[0], info);
                if (info.BosTokenId is int bos)
                    prompt = [bos, .. prompt];
                int start = Find(prompt, needleTokens);
                if (start < 0)
                {
                    var spaced = StripBos((await model.TokenizeAsync([" " + needle], ct))[0], info);
                    start = Find(prompt, spaced);
                    if (start >= 0)
                        needleTokens = spaced;
                }
                if (start < 0)
                    throw new InvalidParametersException($"the needle is not found in the tokenized context (length {length}, depth {depth}%): its tokens merge with the text around it; start and end it with a word boundary or punctuation");
                if (prompt.Length + answerTokens > info.ContextLength)
                    throw new InvalidParametersException($"the prompt at length {length} is {prompt.Length} tokens; with {answerTokens} answer tokens it exceeds the model's context of {info.ContextLength}");
                var (spanStart, spanEnd) = LocateAnswer(prompt, start, start + needleTokens.Length, answerForms);
                if (spanStart < 0)
                    throw new InvalidParametersException($"text.answer '{Quote(answer)}' is not found in the tokenized prompt (length {length}, depth {depth}%): no window of its token length shares more than 90 % of its tokens");
                trials.Add(new Trial(prompt, spanStart, spanEnd, length, depth, answerTokens, null, answerWords, text.Stem));
            }
        }
        return trials;
    }

    private static int Find(int[] haystack, int[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            if (haystack.AsSpan(i, needle.Length).SequenceEqual(needle))
                return i;
        }
        return -1;
    }

    /// <summary>
    /// Where the answer lies: its exact tokens inside the inserted needle [needleStart, needleEnd)
    /// if they are there, else Wu et al.'s rule (<see cref="FuzzyFind"/>) on windows starting inside
    /// the needle, else that rule over the whole prompt as the reference applies it. (Inside the needle
    /// first: with a character-level tokenizer the token-set rule also matches haystack text.)
    /// </summary>
    private static (int Start, int End) LocateAnswer(int[] prompt, int needleStart, int needleEnd, int[][] forms)
    {
        foreach (var f in forms)
        {
            int at = Find(prompt[needleStart..Math.Min(prompt.Length, needleEnd + 1)], f);
            if (at >= 0)
                return (needleStart + at, needleStart + at + f.Length);
        }
        foreach (var f in forms)
        {
            var (s, _) = FuzzyFind(prompt[needleStart..needleEnd], f);
            if (s >= 0)
                return (needleStart + s, Math.Min(prompt.Length, needleStart + s + f.Length));
        }
        foreach (var f in forms)
        {
            var found = FuzzyFind(prompt, f);
            if (found.Start >= 0)
                return found;
        }
        return (-1, -1);
    }

    /// <summary>
    /// Wu et al.'s needle location: the first window of <paramref name="span"/>'s length whose
    /// distinct tokens include more than 90 % of the span's distinct tokens; (−1, −1) if none.
    /// </summary>
    public static (int Start, int End) FuzzyFind(int[] prompt, int[] span)
    {
        if (span.Length == 0)
            return (-1, -1);
        var wanted = span.ToHashSet();
        for (int i = 0; i < prompt.Length; i++)
        {
            var window = prompt.AsSpan(i, Math.Min(span.Length, prompt.Length - i)).ToArray().ToHashSet();
            window.IntersectWith(wanted);
            if (window.Count / (double)wanted.Count > 0.9)
                return (i, Math.Min(prompt.Length, i + span.Length));
        }
        return (-1, -1);
    }

    private static string Quote(string s) => s.Length <= 40 ? s : s[..40] + "…";
}
