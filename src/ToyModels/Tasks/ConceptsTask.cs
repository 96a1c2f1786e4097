using System.Text;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.ToyModels.Tasks;

/// <summary>
/// A small language model trained on sentences from a grammar with labelled attributes:
/// <c>the dogs are very happy . what a lovely walk .</c> Subject number decides <c>is</c>/<c>are</c>,
/// the adjective's sentiment decides the sentiment of the exclamation, and the topic of the subject
/// decides its noun. Probes get true labels; steering gets a real direction (sentiment).
/// </summary>
public sealed class ConceptsTask : ToyTask
{
    public const int SentencesPerDocument = 3;
    public const int Length = 40;

    // The grammar's vocabulary, also used by `interpmesh demo` to write sentences the model knows.
    public static readonly string[] Topics = ["animals", "food", "sport"];
    public static readonly string[][] Nouns = [["dog", "cat", "bird", "horse"], ["apple", "cake", "pie", "soup"], ["ball", "game", "team", "race"]];
    public static readonly string[] TopicNouns = ["walk", "meal", "match"];
    public static readonly string[] Positive = ["happy", "good", "bright", "warm", "kind"];
    public static readonly string[] Negative = ["sad", "bad", "dark", "cold", "cruel"];
    public static readonly string[] PositiveExclamation = ["lovely", "great", "nice"];
    public static readonly string[] NegativeExclamation = ["awful", "grim", "poor"];
    public static readonly string[] Adverbs = ["very", "so", "quite"];

    private readonly Dictionary<string, int> id;

    public ConceptsTask()
    {
        var words = new List<string> { "<unk>", "<bos>", "the", "is", "are", ".", "what", "a" };
        foreach (var group in Nouns)
            foreach (var n in group)
                words.AddRange([n, n + "s"]);
        words.AddRange(TopicNouns);
        words.AddRange(Positive);
        words.AddRange(Negative);
        words.AddRange(PositiveExclamation);
        words.AddRange(NegativeExclamation);
        words.AddRange(Adverbs);
        Tokenizer = WordLevelTokenizer.Create(words, "<unk>", "<bos>", null, addsBos: true);
        id = words.Select((w, i) => (w, i)).ToDictionary(p => p.w, p => p.i);
        Config = new ModelConfig
        {
            Architecture = "GPT2LMHeadModel", NLayers = 2, DModel = 64, NHeads = 4, NKvHeads = 4, DHead = 16, DMlp = 256,
            VocabSize = words.Count, ContextLength = 48, Norm = NormKind.LayerNorm, NormEps = 1e-5,
            Positional = PositionalKind.Learned, Mlp = MlpKind.GeluTanh, TiedEmbeddings = true, BosTokenId = 1,
        };
    }

    public override string Name => "concepts";
    public override string Summary => "2-layer language model trained on grammar sentences with sentiment, number and topic labels";
    public override WordLevelTokenizer Tokenizer { get; }
    public override ModelConfig Config { get; }
    public override TrainingDefaults Defaults => new(Steps: 1500, BatchSize: 32, LearningRate: 3e-3, Seed: 1);

    /// <summary>The labels of one sentence.</summary>
    public sealed record Labels(bool Positive, bool Plural, int Topic);

    /// <summary>One sentence's tokens, labels, and the positions (within the sentence) of the verb, the word before the exclamation adjective and the word before the topic noun.</summary>
    internal (List<int> Tokens, Labels Labels, int VerbFrom, int AdjectiveFrom, int NounFrom) Sentence(Random rng, Labels? forced = null)
    {
        var labels = forced ?? new Labels(rng.Next(2) == 0, rng.Next(2) == 0, rng.Next(Topics.Length));
        string noun = Nouns[labels.Topic][rng.Next(4)] + (labels.Plural ? "s" : "");
        var tokens = new List<int> { id["the"], id[noun], id[labels.Plural ? "are" : "is"] };
        if (rng.Next(2) == 0)
            tokens.Add(id[Adverbs[rng.Next(Adverbs.Length)]]);
        tokens.Add(id[(labels.Positive ? Positive : Negative)[rng.Next(5)]]);
        tokens.AddRange([id["."], id["what"], id["a"]]);
        int adjectiveFrom = tokens.Count - 1;
        tokens.Add(id[(labels.Positive ? PositiveExclamation : NegativeExclamation)[rng.Next(3)]]);
        int nounFrom = tokens.Count - 1;
        tokens.AddRange([id[TopicNouns[labels.Topic]], id["."]]);
        return (tokens, labels, 1, adjectiveFrom, nounFrom);
    }

    public override TokenBatchData Sample(Random rng, int batch)
    {
        var ids = new long[batch * Length];
        var targets = Enumerable.Repeat(-100L, batch * Length).ToArray();
        for (int r = 0; r < batch; r++)
        {
            var doc = new List<int> { 1 };
            for (int s = 0; s < SentencesPerDocument; s++)
                doc.AddRange(Sentence(rng).Tokens);
            for (int t = 0; t < Length; t++)
                ids[r * Length + t] = t < doc.Count ? doc[t] : 0;
            for (int t = 0; t + 1 < doc.Count; t++)
                targets[r * Length + t] = doc[t + 1];
        }
        return new TokenBatchData(ids, targets, batch, Length);
    }

    /// <summary>Held-out documents; targets only at the positions one metric scores.</summary>
    private (TokenBatchData Data, Dictionary<int, IReadOnlySet<long>> Allowed) EvalBatch(int seed, int batch, string metric)
    {
        var rng = new Random(seed);
        var ids = new long[batch * Length];
        var targets = Enumerable.Repeat(-100L, batch * Length).ToArray();
        var allowed = new Dictionary<int, IReadOnlySet<long>>();
        var positive = PositiveExclamation.Select(w => (long)id[w]).ToHashSet();
        var negative = NegativeExclamation.Select(w => (long)id[w]).ToHashSet();
        for (int r = 0; r < batch; r++)
        {
            var doc = new List<int> { 1 };
            for (int s = 0; s < SentencesPerDocument; s++)
            {
                var (tokens, labels, verbFrom, adjectiveFrom, nounFrom) = Sentence(rng);
                int at = r * Length + doc.Count;
                switch (metric)
                {
                    case "agreement":
                        targets[at + verbFrom] = tokens[verbFrom + 1];
                        allowed[at + verbFrom] = new HashSet<long> { tokens[verbFrom + 1] };
                        break;
                    case "sentiment":
                        targets[at + adjectiveFrom] = tokens[adjectiveFrom + 1];
                        allowed[at + adjectiveFrom] = labels.Positive ? positive : negative;
                        break;
                    default:
                        targets[at + nounFrom] = tokens[nounFrom + 1];
                        allowed[at + nounFrom] = new HashSet<long> { tokens[nounFrom + 1] };
                        break;
                }
                doc.AddRange(tokens);
            }
            for (int t = 0; t < doc.Count; t++)
                ids[r * Length + t] = doc[t];
        }
        return (new TokenBatchData(ids, targets, batch, Length), allowed);
    }

    public override IReadOnlyList<TaskMetric> Evaluate(Transformer model, HookPlan? plan = null, int examples = 256, int seed = 1_000_003)
    {
        double Score(string metric)
        {
            var (data, allowed) = EvalBatch(seed, examples, metric);
            return Accuracy.InSet(model, plan, data, i => allowed[i]);
        }
        return
        [
            new("sentiment_accuracy", Score("sentiment"), 0.5, "after \"what a\", the predicted adjective has the sentence's sentiment"),
            new("agreement_accuracy", Score("agreement"), 0.5, "after the subject, the predicted verb agrees in number (is/are)"),
            new("topic_accuracy", Score("topic"), 1.0 / Topics.Length, "after the exclamation adjective, the predicted noun matches the subject's topic"),
        ];
    }

    /// <summary>Single sentences up to "what a" with their labels, as prompts for probes and steering.</summary>
    public (long[][] Prompts, Labels[] Labels) Prompts(int seed, int count, bool? positive = null)
    {
        var rng = new Random(seed);
        var prompts = new long[count][];
        var labels = new Labels[count];
        for (int i = 0; i < count; i++)
        {
            var forced = positive is null ? null : new Labels(positive.Value, rng.Next(2) == 0, rng.Next(Topics.Length));
            var (tokens, l, _, adjectiveFrom, _) = Sentence(rng, forced);
            prompts[i] = [1, .. tokens.Take(adjectiveFrom + 1).Select(x => (long)x)];
            labels[i] = l;
        }
        return (prompts, labels);
    }

    /// <summary>Residual stream at the last prompt token, per layer (resid_post), for each prompt.</summary>
    internal static Dictionary<string, Tensor> LastTokenResiduals(Transformer model, long[][] prompts)
    {
        var rows = prompts.Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToList()).ToList();
        var (ids, mask) = InterpMesh.Runtime.Execution.TokenBatch.Pad(rows, InterpMesh.Runtime.Execution.PaddingSide.Left);
        var plan = HookPlan.Build(model.Hooks, [new CaptureRequest(["blocks.*.hook_resid_post"], PositionSelection.Last)], null);
        var result = new Dictionary<string, Tensor>();
        model.Forward(ids, mask, plan, (h, t) => result[h.Name] = t[.., 0], LogitsMode.None);
        return result;
    }

    public override MechanismReport Analyze(Transformer model)
    {
        using var grad = no_grad();
        using var scope = NewDisposeScope();
        var (train, trainLabels) = Prompts(5, 400);
        var (test, testLabels) = Prompts(6, 400);
        var trainActs = LastTokenResiduals(model, train);
        var testActs = LastTokenResiduals(model, test);
        var md = new StringBuilder();
        md.AppendLine("Sentiment probe: difference-of-means direction fitted on 400 prompts (`… . what a`), threshold at the midpoint, accuracy on 400 held-out prompts:").AppendLine();
        md.AppendLine("| hook (last token) | probe accuracy |").AppendLine("| --- | ---: |");
        var findings = new List<TaskMetric>();
        string bestHook = "";
        double best = -1;
        Tensor? bestDirection = null;
        foreach (var (hook, acts) in trainActs)
        {
            var pos = tensor(trainLabels.Select(l => l.Positive).ToArray());
            var meanPos = acts[pos].mean([0]);
            var meanNeg = acts[pos.logical_not()].mean([0]);
            var direction = meanPos - meanNeg;
            var threshold = (Scalars.DivValue(Scalars.Add(meanPos, meanNeg), 2) * direction).sum();
            var predicted = (testActs[hook] * direction).sum(1).gt(threshold).data<bool>().ToArray();
            double accuracy = predicted.Zip(testLabels).Count(p => p.First == p.Second.Positive) / (double)testLabels.Length;
            md.AppendLine($"| `{hook}` | {accuracy:P1} |");
            findings.Add(new($"sentiment_probe_{hook}", accuracy, 0.5, $"difference-of-means sentiment probe at {hook}"));
            if (accuracy > best)
            {
                best = accuracy;
                bestHook = hook;
                bestDirection = direction;
            }
        }
        // Steering: add the positive-minus-negative direction at the first block's output to negative prompts.
        string steerHook = "blocks.0.hook_resid_post";
        var steer = (trainActs[steerHook][tensor(trainLabels.Select(l => l.Positive).ToArray())].mean([0])
                     - trainActs[steerHook][tensor(trainLabels.Select(l => !l.Positive).ToArray())].mean([0])).DetachFromDisposeScope();
        var (negatives, _) = Prompts(7, 200, positive: false);
        double cleanPositive = PositiveRate(model, negatives, null);
        var plan = HookPlan.Build(model.Hooks, null, [new Intervention(steerHook, InterventionOp.Add, Scalars.MulValue(steer, 2.0))]);
        double steeredPositive = PositiveRate(model, negatives, plan);
        steer.Dispose();
        md.AppendLine().AppendLine($"Best layer for the probe: `{bestHook}` ({best:P1}).").AppendLine();
        md.AppendLine($"Steering: adding 2 × (mean positive − mean negative) of `{steerHook}` at every position of 200 negative prompts " +
            $"changes the predicted exclamation from negative to positive in {steeredPositive:P1} of them (without steering: {cleanPositive:P1}).");
        findings.Add(new("steering_positive_rate", steeredPositive, cleanPositive, $"share of negative prompts whose continuation turns positive when steering at {steerHook}"));
        return new MechanismReport([], findings, md.ToString());
    }

    /// <summary>Share of prompts whose greedy next token is a positive exclamation adjective.</summary>
    internal double PositiveRate(Transformer model, long[][] prompts, HookPlan? plan)
    {
        using var scope = NewDisposeScope();
        var rows = prompts.Select(p => (IReadOnlyList<int>)p.Select(x => (int)x).ToList()).ToList();
        var (ids, mask) = InterpMesh.Runtime.Execution.TokenBatch.Pad(rows, InterpMesh.Runtime.Execution.PaddingSide.Left);
        var logits = model.Forward(ids, mask, plan ?? HookPlan.Empty, null, LogitsMode.Last)!;
        var predicted = logits[.., 0].argmax(-1).data<long>().ToArray();
        var positive = PositiveExclamation.Select(w => (long)id[w]).ToHashSet();
        return predicted.Count(positive.Contains) / (double)predicted.Length;
    }

    public override string CardTaskSection => """
        Documents are `<bos>` followed by three sentences from a small grammar:
        `the <noun> <is|are> [very|so|quite] <adjective> . what a <exclamation> <walk|meal|match> .`
        Each sentence has three labelled attributes: **sentiment** (positive adjectives happy/good/bright/warm/kind vs.
        negative sad/bad/dark/cold/cruel; the exclamation must match: lovely/great/nice vs. awful/grim/poor), **number**
        (dog vs. dogs; the verb must agree), and **topic** (animals, food, sport; the final noun is walk, meal or match).
        The loss is next-token cross-entropy on every token. Expected: sentiment is carried from the adjective to the
        exclamation position and is linearly readable there (probing), and adding the positive-minus-negative direction
        turns negative continuations positive (steering).
        """;
}
