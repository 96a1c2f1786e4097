using InterpMesh.ToyModels.Tasks;

namespace InterpMesh.Cli.Demo;

/// <summary>
/// Inputs for the demo, written in the toy models' grammars (the "concepts" vocabulary is the
/// training task's own; see each model's README.md and mechanism.json): sentiment sentences for "concepts", key–value lists for "retrieval", random
/// token sequences for "induction".
/// </summary>
internal static class DemoData
{
    private static readonly string[][] Nouns = ConceptsTask.Nouns;
    private static readonly string[] Topics = ConceptsTask.TopicNouns;
    private static readonly string[] Positive = ConceptsTask.Positive;
    private static readonly string[] Negative = ConceptsTask.Negative;
    private static readonly string[] Adverbs = ConceptsTask.Adverbs;
    public static readonly string[] PositiveExclamations = ConceptsTask.PositiveExclamation;
    public static readonly string[] NegativeExclamations = ConceptsTask.NegativeExclamation;

    /// <summary>"the dogs are very happy . what a" with its sentiment, alternating classes.</summary>
    public static List<(string Text, string Label)> LabelledSentiment(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(i =>
        {
            bool positive = i % 2 == 0, plural = rng.Next(2) == 0;
            string noun = Nouns[rng.Next(3)][rng.Next(4)] + (plural ? "s" : "");
            string adverb = rng.Next(2) == 0 ? "" : Adverbs[rng.Next(3)] + " ";
            string adjective = (positive ? Positive : Negative)[rng.Next(5)];
            return ($"the {noun} {(plural ? "are" : "is")} {adverb}{adjective} . what a", positive ? "positive" : "negative");
        })];
    }

    /// <summary>Whole sentences ("the cake is warm . what a lovely meal .") for SAE training and inspection.</summary>
    public static List<string> Sentences(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ =>
        {
            int topic = rng.Next(3);
            bool good = rng.Next(2) == 0, plural = rng.Next(2) == 0;
            string noun = Nouns[topic][rng.Next(4)] + (plural ? "s" : "");
            string adjective = (good ? Positive : Negative)[rng.Next(5)];
            string exclamation = (good ? PositiveExclamations : NegativeExclamations)[rng.Next(3)];
            return $"the {noun} {(plural ? "are" : "is")} {adjective} . what a {exclamation} {Topics[topic]} .";
        })];
    }

    /// <summary>Contrast pairs that differ only in sentiment (the steering direction).</summary>
    public static (List<string> Positive, List<string> Negative) SentimentPairs(int n)
    {
        var p = new List<string>();
        var q = new List<string>();
        for (int i = 0; i < n; i++)
        {
            string noun = Nouns[i % 3][i / 3 % 4];
            p.Add($"the {noun} is {Positive[i % 5]} . what a");
            q.Add($"the {noun} is {Negative[(i + 2) % 5]} . what a");
        }
        return (p, q);
    }

    public static readonly string[] NegativePrompts = ["the cat is sad . what a", "the dogs are cold . what a", "the ball is bad . what a"];

    /// <summary>The "retrieval" toy's vocabulary: keys k00–k23, values v00–v23, '|' between pairs.</summary>
    public static object KeyValueTask() => new
    {
        keys = Enumerable.Range(0, 24).Select(i => $"k{i:00}"),
        values = Enumerable.Range(0, 24).Select(i => $"v{i:00}"),
        separator = new[] { "|" },
        pairs = new[] { 10 },
    };

    /// <summary>The "induction" toy's vocabulary: t00–t59.</summary>
    public static string[] InductionTokens() => [.. Enumerable.Range(0, 60).Select(i => $"t{i:00}")];

    /// <summary>
    /// Prompt pairs for the circuits analyses on the "induction" toy: clean = 3 filler tokens, an
    /// 8-token segment, then its first 5 tokens again (the answer is the segment's 6th token, which
    /// follows the earlier occurrence of the current token); corrupted = the same with the whole first
    /// occurrence replaced (<paramref name="whole"/>) or only the token before the answer's earlier
    /// occurrence (so the answer still stands there but no longer follows the current token).
    /// </summary>
    public static List<object> InductionPairs(int n, int seed, bool whole)
    {
        var rng = new Random(seed);
        var words = InductionTokens();
        var pairs = new List<object>();
        for (int i = 0; i < n; i++)
        {
            var s = Enumerable.Range(0, words.Length).OrderBy(_ => rng.Next()).ToArray();
            int[] filler = s[..3], segment = s[3..11], other = s[11..19];
            int[] first = whole ? other : [.. segment[..4], other[0], .. segment[5..]];
            string Text(IEnumerable<int> ids) => string.Join(' ', ids.Select(x => words[x]));
            pairs.Add(new
            {
                clean = Text([.. filler, .. segment, .. segment[..5]]),
                corrupted = Text([.. filler, .. first, .. segment[..5]]),
                answer = words[segment[5]],
                wrong = words[s[19]],
            });
        }
        return pairs;
    }

    /// <summary>A random sequence of <paramref name="length"/> tokens, then the same sequence again.</summary>
    public static string RepeatedSequence(int length, int seed)
    {
        var rng = new Random(seed);
        var tokens = InductionTokens().OrderBy(_ => rng.Next()).Take(length).ToList();
        return string.Join(' ', tokens.Concat(tokens));
    }
}
