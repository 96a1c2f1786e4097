using System.Text;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.ToyModels.Tasks;

/// <summary>
/// In-context function learning: <c>&lt;bos&gt; x f(x) x f(x) …</c> where f is one of three fixed
/// shifts (x → x+1, x+5 or x+11, mod 24), chosen per sequence. The model must infer which function
/// the examples show and apply it to the next x — the kind of task function vectors (Todd et al.
/// 2024) capture: heads at the query position carry "which function", and their mean output,
/// added to a prompt with no examples, should make the model apply that function zero-shot.
/// </summary>
public sealed class FunctionsTask : ToyTask
{
    public const int Symbols = 24, Examples = 8;
    public const int Length = 1 + 2 * Examples;
    public static readonly int[] Shifts = [1, 5, 11];
    private const int Bos = 1, FirstSymbol = 2;

    public FunctionsTask()
    {
        var words = new List<string> { "<unk>", "<bos>" };
        words.AddRange(Enumerable.Range(0, Symbols).Select(i => $"x{i:D2}"));
        Tokenizer = WordLevelTokenizer.Create(words, "<unk>", "<bos>", null, addsBos: true);
        Config = TwoLayerLlama(words.Count, 32, dMlp: 128, bosTokenId: Bos);
    }

    public override string Name => "functions";
    public override string Summary => "2-layer transformer trained to infer one of three shift functions from in-context examples";
    public override WordLevelTokenizer Tokenizer { get; }
    public override ModelConfig Config { get; }
    public override TrainingDefaults Defaults => new(Steps: 2000, BatchSize: 64, LearningRate: 3e-3, Seed: 1);

    /// <summary>The token of f_task(x).</summary>
    public static int Apply(int task, int x) => FirstSymbol + (x + Shifts[task]) % Symbols;

    /// <summary>Rows of examples for one task each; loss on every answer after the first example (the first is a guess).</summary>
    internal static TokenBatchData Batch(Random rng, int batch, int firstScored = 1)
    {
        var ids = new long[batch * Length];
        var targets = Enumerable.Repeat(-100L, batch * Length).ToArray();
        for (int r = 0; r < batch; r++)
        {
            int task = rng.Next(Shifts.Length);
            ids[r * Length] = Bos;
            for (int i = 0; i < Examples; i++)
            {
                int x = rng.Next(Symbols);
                ids[r * Length + 1 + 2 * i] = FirstSymbol + x;
                ids[r * Length + 2 + 2 * i] = Apply(task, x);
                if (i >= firstScored)
                    targets[r * Length + 1 + 2 * i] = Apply(task, x);
            }
        }
        return new TokenBatchData(ids, targets, batch, Length);
    }

    public override TokenBatchData Sample(Random rng, int batch) => Batch(rng, batch);

    public override IReadOnlyList<TaskMetric> Evaluate(Transformer model, HookPlan? plan = null, int examples = 512, int seed = 1_000_003) =>
    [
        new("icl_accuracy", Accuracy.Argmax(model, plan, Batch(new Random(seed), examples, firstScored: 2)), 1.0 / Symbols,
            "greedy accuracy of f(x) after at least two examples of f (held-out sequences)"),
        new("first_answer_accuracy", Accuracy.Argmax(model, plan, FirstOnly(new Random(seed + 1), examples)), 1.0 / Shifts.Length,
            "accuracy of f(x) for the second x, after one example (one example is enough to tell the shifts apart)"),
    ];

    private static TokenBatchData FirstOnly(Random rng, int batch)
    {
        var data = Batch(rng, batch, firstScored: 1);
        for (int r = 0; r < batch; r++)
            for (int t = 0; t < Length; t++)
                if (t != 3)
                    data.Targets[r * Length + t] = -100;
        return data;
    }

    public override MechanismReport Analyze(Transformer model)
    {
        var metrics = Evaluate(model);
        var md = new StringBuilder();
        md.AppendLine("No heads are named: the function vectors analysis of the steering plugin is what finds them (its test uses this model).").AppendLine();
        md.AppendLine($"In-context accuracy after two or more examples: {metrics[0].Value:P1}; after one example: {metrics[1].Value:P1}; chance over symbols {1.0 / Symbols:P1}.");
        return new MechanismReport([], [], md.ToString());
    }

    public override string CardTaskSection => $"""
        Each sequence is `<bos>` followed by {Examples} pairs `x f(x)` over 24 symbols `x00`–`x23`, where f is one of three shifts
        (x+1, x+5, x+11 mod 24) chosen per sequence: `<bos> x03 x04 x17 x18 x09 x10 …` is the +1 function. The loss is on each f(x)
        after the first example. The function must be inferred from the examples in context, so a prompt with no examples is
        ambiguous (one of three): a function vector — the mean output of the heads that carry "which function" at the query —
        should resolve it when added to such a prompt.
        """;
}
