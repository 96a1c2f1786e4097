using System.Text;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tokenization;
using InterpMesh.ToyModels.Analysis;

namespace InterpMesh.ToyModels.Tasks;

/// <summary>
/// Key–value recall: <c>&lt;bos&gt; k v k v … | k v k v …</c>. After the separator each key is a
/// query whose answer is the value it was paired with in the context. Answering needs a head that
/// attends from the query to the matching pair and copies the value: a retrieval head.
/// </summary>
public sealed class RetrievalTask : ToyTask
{
    public const int Keys = 24, Values = 24, Pairs = 10, Queries = 10;
    public const int Length = 1 + 2 * Pairs + 1 + 2 * Queries;
    private const int Bos = 1, Sep = 2, FirstKey = 3, FirstValue = FirstKey + Keys;

    public RetrievalTask()
    {
        var words = new List<string> { "<unk>", "<bos>", "|" };
        words.AddRange(Enumerable.Range(0, Keys).Select(i => $"k{i:D2}"));
        words.AddRange(Enumerable.Range(0, Values).Select(i => $"v{i:D2}"));
        Tokenizer = WordLevelTokenizer.Create(words, "<unk>", "<bos>", null, addsBos: true);
        Config = TwoLayerLlama(words.Count, 48, dMlp: 128, bosTokenId: Bos);
    }

    public override string Name => "retrieval";
    public override string Summary => "2-layer transformer trained on key–value recall over 10 pairs";
    public override WordLevelTokenizer Tokenizer { get; }
    public override ModelConfig Config { get; }
    public override TrainingDefaults Defaults => new(Steps: 3000, BatchSize: 64, LearningRate: 3e-3, Seed: 1);

    /// <summary>One sequence: ids, and for each query its position and the context position of its answer.</summary>
    internal static (long[] Ids, (int Query, int Answer)[] Lookups) Sequence(Random rng)
    {
        var ids = new long[Length];
        ids[0] = Bos;
        var keys = Enumerable.Range(0, Keys).OrderBy(_ => rng.Next()).Take(Pairs).ToArray();
        var values = Enumerable.Range(0, Pairs).Select(_ => rng.Next(Values)).ToArray();
        for (int i = 0; i < Pairs; i++)
        {
            ids[1 + 2 * i] = FirstKey + keys[i];
            ids[2 + 2 * i] = FirstValue + values[i];
        }
        ids[1 + 2 * Pairs] = Sep;
        var asked = Enumerable.Range(0, Pairs).OrderBy(_ => rng.Next()).Take(Queries).ToArray();
        var lookups = new (int, int)[Queries];
        for (int j = 0; j < Queries; j++)
        {
            int q = 2 + 2 * Pairs + 2 * j;
            ids[q] = FirstKey + keys[asked[j]];
            ids[q + 1] = FirstValue + values[asked[j]];
            lookups[j] = (q, 2 + 2 * asked[j]);
        }
        return (ids, lookups);
    }

    private static TokenBatchData Batch(Random rng, int batch)
    {
        var ids = new long[batch * Length];
        var targets = Enumerable.Repeat(-100L, batch * Length).ToArray();
        for (int r = 0; r < batch; r++)
        {
            var (seq, lookups) = Sequence(rng);
            Array.Copy(seq, 0, ids, r * Length, Length);
            foreach (var (q, _) in lookups)
                targets[r * Length + q] = seq[q + 1];
        }
        return new TokenBatchData(ids, targets, batch, Length);
    }

    /// <summary>
    /// Training batches mix recall sequences with repeated random sequences over the same symbols
    /// (loss everywhere): their dense signal forms the copy-from-context circuit quickly, and the
    /// recall rows teach it to answer queries.
    /// </summary>
    public override TokenBatchData Sample(Random rng, int batch)
    {
        var recall = Batch(rng, batch);
        for (int r = 1; r < batch; r += 2)
        {
            int at = r * Length;
            int period = rng.Next(4, 13);
            recall.Ids[at] = Bos;
            for (int t = 1; t < Length; t++)
                recall.Ids[at + t] = t <= period ? FirstKey + rng.Next(Keys + Values) : recall.Ids[at + t - period];
            for (int t = 0; t < Length; t++)
                recall.Targets[at + t] = t + 1 < Length ? recall.Ids[at + t + 1] : -100;
        }
        return recall;
    }

    public override IReadOnlyList<TaskMetric> Evaluate(Transformer model, HookPlan? plan = null, int examples = 512, int seed = 1_000_003) =>
    [
        new("recall_accuracy", Accuracy.Argmax(model, plan, Batch(new Random(seed), examples)), 1.0 / Values,
            "greedy accuracy of the value predicted after each query key (held-out sequences)"),
    ];

    /// <summary>Mean attention from each query key to the value paired with it in the context, per head.</summary>
    public static double[,] RetrievalScores(Transformer model, int seed = 77, int batch = 128)
    {
        var rng = new Random(seed);
        var data = new long[batch * Length];
        var answers = new Dictionary<(int, int), int>();
        for (int r = 0; r < batch; r++)
        {
            var (seq, lookups) = Sequence(rng);
            Array.Copy(seq, 0, data, r * Length, Length);
            foreach (var (q, a) in lookups)
                answers[(r, q)] = a;
        }
        return HeadAnalysis.Score(model, new TokenBatchData(data, new long[data.Length], batch, Length), (r, q) => answers.TryGetValue((r, q), out int a) ? a : -1);
    }

    /// <summary>Mean attention from each context value to its own key (the position before it), per head.</summary>
    public static double[,] PairingScores(Transformer model, int seed = 78, int batch = 128)
    {
        var rng = new Random(seed);
        var data = new long[batch * Length];
        for (int r = 0; r < batch; r++)
            Array.Copy(Sequence(rng).Ids, 0, data, r * Length, Length);
        return HeadAnalysis.Score(model, new TokenBatchData(data, new long[data.Length], batch, Length), (_, q) => q >= 2 && q <= 2 * Pairs && q % 2 == 0 ? q - 1 : -1);
    }

    public override MechanismReport Analyze(Transformer model)
    {
        var retrieval = RetrievalScores(model);
        var pairing = PairingScores(model);
        int last = model.Config.NLayers - 1;
        var retrievalHeads = HeadAnalysis.Pick(retrieval, [last], 0.3, "retrieval", model.Config.NHeads - 1);
        double clean = Evaluate(model)[0].Value;
        double ablated = Evaluate(model, HeadAnalysis.Ablate(model, retrievalHeads.Select(h => (h.Layer, h.Head))))[0].Value;
        var controls = HeadAnalysis.Controls(model, retrievalHeads, (l, h) => Math.Max(retrieval[l, h], pairing[l, h]));
        double control = Evaluate(model, HeadAnalysis.Ablate(model, controls))[0].Value;
        var pairingHeads = HeadAnalysis.Pick(pairing, [0], 0.3, "key-to-value (previous-token)", 2);

        var md = new StringBuilder();
        md.AppendLine(HeadAnalysis.Table(retrieval, "Retrieval score: mean attention from a query key to the value paired with that key in the context"));
        md.AppendLine(HeadAnalysis.Table(pairing, "Pairing score: mean attention from each context value to its key (the token before it)"));
        md.AppendLine($"Named retrieval heads: {string.Join(", ", retrievalHeads.Select(h => $"{h.Label} ({h.Score:F2})"))}. " +
            $"Layer-0 heads that write each key into its value's position: {string.Join(", ", pairingHeads.Select(h => $"{h.Label} ({h.Score:F2})"))}.").AppendLine();
        md.Append(HeadAnalysis.CausalChecks("Causal check (zero-ablating `attn.hook_z`, recall accuracy on held-out sequences):", "recall accuracy",
        [
            ("clean", clean),
            ($"retrieval heads ablated ({HeadAnalysis.Labels(retrievalHeads.Select(h => (h.Layer, h.Head)))})", ablated),
            ($"as many other heads ablated ({HeadAnalysis.Labels(controls)})", control),
        ], 1.0 / Values));
        return new MechanismReport([.. retrievalHeads, .. pairingHeads],
        [
            new("accuracy_named_heads_ablated", ablated, 1.0 / Values, "recall accuracy with the retrieval heads zero-ablated"),
            new("accuracy_control_heads_ablated", control, 1.0 / Values, "recall accuracy with as many other heads zero-ablated"),
        ], md.ToString());
    }

    public override string CardTaskSection => $"""
        Each sequence is `<bos>`, then {Pairs} key–value pairs (`k00`–`k23` keys, distinct within a sequence; `v00`–`v23` values), then
        `|`, then {Queries} of those keys each followed by its value: `<bos> k07 v12 k19 v03 … | k19 v03 k07 v12 …`. The loss is only
        on the value after each query key. Half of each training batch is instead a random sequence over the same symbols repeated
        with a period of 4–12 tokens (loss on every position), whose dense signal forms the copying circuit quickly.
        Pairs are random per sequence, so the answer must be copied from the context:
        a **retrieval head** in the last layer attends from the query key to the matching pair's value and copies it, helped by
        a layer-0 head that writes each key into the position of the value after it.
        """;
}
