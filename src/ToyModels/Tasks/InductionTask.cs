using System.Text;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tokenization;
using InterpMesh.ToyModels.Analysis;

namespace InterpMesh.ToyModels.Tasks;

/// <summary>
/// Sequences of random tokens in which one random segment occurs twice, at random offsets. The
/// second occurrence can only be predicted by finding the earlier copy and reading the token that
/// followed it: a previous-token head (layer 0) plus an induction head (layer 1).
/// </summary>
public sealed class InductionTask : ToyTask
{
    public const int Symbols = 60;
    public const int Length = 64;
    private const int MinSegment = 6, MaxSegment = 20, MaxFiller = 8;

    public InductionTask()
    {
        var words = new List<string> { "<unk>", "<bos>" };
        words.AddRange(Enumerable.Range(0, Symbols).Select(i => $"t{i:D2}"));
        Tokenizer = WordLevelTokenizer.Create(words, "<unk>", "<bos>", null, addsBos: true);
        Config = TwoLayerLlama(words.Count, Length, dMlp: 64, bosTokenId: 1);
    }

    public override string Name => "induction";
    public override string Summary => "2-layer transformer trained on random sequences with one repeated segment";
    public override WordLevelTokenizer Tokenizer { get; }
    public override ModelConfig Config { get; }
    public override TrainingDefaults Defaults => new(Steps: 1500, BatchSize: 32, LearningRate: 3e-3, Seed: 1);

    private const int Bos = 1, FirstSymbol = 2;

    /// <summary>
    /// One sequence: <c>&lt;bos&gt;</c>, a few random filler tokens, then a random segment repeated
    /// until the end. Returns where the first and second copies start and the segment length.
    /// </summary>
    private static (long[] Ids, int First, int Second, int SegmentLength) Sequence(Random rng)
    {
        var ids = new long[Length];
        ids[0] = Bos;
        int filler = rng.Next(0, MaxFiller + 1);
        int len = rng.Next(MinSegment, MaxSegment + 1);
        for (int i = 1; i <= filler; i++)
            ids[i] = FirstSymbol + rng.Next(Symbols);
        int first = 1 + filler;
        for (int i = 0; i < len; i++)
            ids[first + i] = FirstSymbol + rng.Next(Symbols);
        for (int i = first + len; i < Length; i++)
            ids[i] = ids[i - len];
        return (ids, first, first + len, len);
    }

    public override TokenBatchData Sample(Random rng, int batch)
    {
        var ids = new long[batch * Length];
        var targets = new long[batch * Length];
        for (int r = 0; r < batch; r++)
        {
            var (seq, _, _, _) = Sequence(rng);
            Array.Copy(seq, 0, ids, r * Length, Length);
            for (int t = 0; t < Length; t++)
                targets[r * Length + t] = t + 1 < Length ? seq[t + 1] : -100;
        }
        return new TokenBatchData(ids, targets, batch, Length);
    }

    /// <summary>Held-out sequences with targets only inside the second copy (or only the first, as a control).</summary>
    private static TokenBatchData EvalBatch(int seed, int batch, bool secondCopy)
    {
        var rng = new Random(seed);
        var ids = new long[batch * Length];
        var targets = Enumerable.Repeat(-100L, batch * Length).ToArray();
        for (int r = 0; r < batch; r++)
        {
            var (seq, first, second, len) = Sequence(rng);
            Array.Copy(seq, 0, ids, r * Length, Length);
            int start = secondCopy ? second : first;
            // Position start+i predicts token start+i+1, which the earlier copy determines (i < len-1).
            for (int i = 0; i < len - 1; i++)
                targets[r * Length + start + i] = seq[start + i + 1];
        }
        return new TokenBatchData(ids, targets, batch, Length);
    }

    public override IReadOnlyList<TaskMetric> Evaluate(Transformer model, HookPlan? plan = null, int examples = 512, int seed = 1_000_003) =>
    [
        new("induction_accuracy", Accuracy.Argmax(model, plan, EvalBatch(seed, examples, secondCopy: true)), 1.0 / Symbols,
            "greedy accuracy on the second occurrence of a repeated segment (held-out sequences)"),
        new("first_occurrence_accuracy", Accuracy.Argmax(model, plan, EvalBatch(seed, examples, secondCopy: false)), 1.0 / Symbols,
            "the same positions' first occurrence, which nothing predicts (control)"),
    ];

    /// <summary>Previous-token scores on random sequences and induction scores on bos + R + R.</summary>
    public static (double[,] PreviousToken, double[,] Induction) Scores(Transformer model, int seed = 77, int batch = 64)
    {
        var rng = new Random(seed);
        const int half = 20;
        int t = 1 + 2 * half;
        var random = new long[batch * t];
        var repeated = new long[batch * t];
        for (int r = 0; r < batch; r++)
        {
            random[r * t] = repeated[r * t] = Bos;
            for (int i = 1; i < t; i++)
                random[r * t + i] = FirstSymbol + rng.Next(Symbols);
            var segment = Enumerable.Range(0, half).Select(_ => (long)(FirstSymbol + rng.Next(Symbols))).ToArray();
            for (int i = 0; i < half; i++)
                repeated[r * t + 1 + i] = repeated[r * t + 1 + half + i] = segment[i];
        }
        var prev = HeadAnalysis.Score(model, new TokenBatchData(random, new long[random.Length], batch, t), (_, q) => q >= 2 ? q - 1 : -1);
        var induction = HeadAnalysis.Score(model, new TokenBatchData(repeated, new long[repeated.Length], batch, t), (_, q) => q > half ? q - half + 1 : -1);
        return (prev, induction);
    }

    public override MechanismReport Analyze(Transformer model)
    {
        var (prev, induction) = Scores(model);
        var prevHeads = HeadAnalysis.Pick(prev, [0], 0.3, "previous-token", model.Config.NHeads);
        var inductionHeads = HeadAnalysis.Pick(induction, [model.Config.NLayers - 1], 0.3, "induction", model.Config.NHeads);
        double clean = Evaluate(model)[0].Value;
        double Accuracy(IEnumerable<(int Layer, int Head)> heads) => Evaluate(model, HeadAnalysis.Ablate(model, heads))[0].Value;

        // The circuit's bottleneck: without the previous-token heads no induction head can find its target.
        double prevAblated = Accuracy(prevHeads.Select(h => (h.Layer, h.Head)));
        var prevControls = HeadAnalysis.Controls(model, prevHeads, (l, h) => prev[l, h]);
        double prevControl = Accuracy(prevControls);
        double inductionAblated = Accuracy(inductionHeads.Select(h => (h.Layer, h.Head)));
        var half = inductionHeads.Take(Math.Max(1, inductionHeads.Count / 2)).ToList();
        double halfAblated = Accuracy(half.Select(h => (h.Layer, h.Head)));

        var md = new StringBuilder();
        md.AppendLine(HeadAnalysis.Table(prev, "Previous-token score: mean attention from each position to the one before it, random sequences"));
        md.AppendLine(HeadAnalysis.Table(induction, "Induction score: mean attention from the second copy of a repeated sequence to the token after the earlier occurrence"));
        md.AppendLine($"Named heads (score ≥ 0.3): previous-token {string.Join(", ", prevHeads.Select(h => $"{h.Label} ({h.Score:F2})"))}; " +
            $"induction {string.Join(", ", inductionHeads.Select(h => $"{h.Label} ({h.Score:F2})"))}.").AppendLine();
        md.AppendLine(HeadAnalysis.CausalChecks("Causal checks (zero-ablating `attn.hook_z` of the heads, induction accuracy on held-out sequences):", "induction accuracy",
        [
            ("clean", clean),
            ($"previous-token heads ablated ({HeadAnalysis.Labels(prevHeads.Select(h => (h.Layer, h.Head)))})", prevAblated),
            ($"as many other heads ablated ({HeadAnalysis.Labels(prevControls)})", prevControl),
            ($"induction heads ablated ({HeadAnalysis.Labels(inductionHeads.Select(h => (h.Layer, h.Head)))})", inductionAblated),
            ($"half of the induction heads ablated ({HeadAnalysis.Labels(half.Select(h => (h.Layer, h.Head)))})", halfAblated),
        ], 1.0 / Symbols));
        md.AppendLine("The induction heads are redundant: each can do the job alone, so only ablating all of them removes induction, " +
            "and there is no equally large set of other heads (the rest are the layer-0 heads the circuit reads from).");
        return new MechanismReport([.. prevHeads, .. inductionHeads],
        [
            new("accuracy_previous_token_heads_ablated", prevAblated, 1.0 / Symbols, "induction accuracy with the previous-token heads zero-ablated"),
            new("accuracy_control_heads_ablated", prevControl, 1.0 / Symbols, "induction accuracy with as many other heads zero-ablated"),
            new("accuracy_induction_heads_ablated", inductionAblated, 1.0 / Symbols, "induction accuracy with all induction heads zero-ablated"),
        ], md.ToString());
    }

    public override string CardTaskSection => $"""
        Each training sequence is `<bos>`, 0–{MaxFiller} random filler tokens, then a random segment of {MinSegment}–{MaxSegment} tokens
        repeated until position {Length - 1}; tokens are drawn uniformly from {Symbols} symbols (`t00`–`t59`). The loss is next-token
        cross-entropy at every position. Only repeats are predictable (from the earlier copy), so the model must learn the
        induction circuit of Olsson et al. (2022): a **previous-token head** in layer 0 writes "the token before me was A" into each
        position, and an **induction head** in layer 1 attends from the current token A to the position after its earlier
        occurrence and copies that token. Offsets and periods vary, so a fixed positional shortcut does not work. Accuracy is
        measured on the second copy of the segment in held-out sequences.
        """;
}
