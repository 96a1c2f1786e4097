using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.ToyModels.Tasks;

/// <summary>A batch of training sequences: ids and next-token targets (-100 = no loss), row-major [batch, length].</summary>
public sealed record TokenBatchData(long[] Ids, long[] Targets, int Batch, int Length);

/// <summary>Default training settings of a task (the model card's "command that reproduces it").</summary>
public sealed record TrainingDefaults(int Steps, int BatchSize, double LearningRate, long Seed);

/// <summary>One accuracy figure of a task.</summary>
public sealed record TaskMetric(string Name, double Value, double Chance, string Description);

/// <summary>
/// A synthetic task whose solution needs a known mechanism. It defines the vocabulary, the model
/// shape, how to sample training data, how to measure accuracy (optionally under interventions,
/// for ablations), and how to find the mechanism in a trained model.
/// </summary>
public abstract class ToyTask
{
    public abstract string Name { get; }
    public abstract string Summary { get; }
    public abstract WordLevelTokenizer Tokenizer { get; }
    public abstract ModelConfig Config { get; }
    public abstract TrainingDefaults Defaults { get; }

    /// <summary>Samples a training batch. Held-out evaluation uses a different seed stream.</summary>
    public abstract TokenBatchData Sample(Random rng, int batch);

    /// <summary>The task's headline accuracy (first metric) and any others, under an optional plan.</summary>
    public abstract IReadOnlyList<TaskMetric> Evaluate(Transformer model, HookPlan? plan = null, int examples = 512, int seed = 1_000_003);

    /// <summary>Locates the expected mechanism and checks it causally; the result goes into the model card.</summary>
    public abstract MechanismReport Analyze(Transformer model);

    /// <summary>
    /// The two-layer Llama shape the head-mechanism tasks share (64 wide, 4 heads of 16, RMSNorm,
    /// rotary positions, SwiGLU, tied embeddings); each task gives its vocabulary, context and MLP width.
    /// </summary>
    protected static ModelConfig TwoLayerLlama(int vocabSize, int contextLength, int dMlp, int bosTokenId) => new()
    {
        Architecture = "LlamaForCausalLM", NLayers = 2, DModel = 64, NHeads = 4, NKvHeads = 4, DHead = 16, DMlp = dMlp,
        VocabSize = vocabSize, ContextLength = contextLength, Norm = NormKind.RmsNorm, NormEps = 1e-5,
        Positional = PositionalKind.Rotary, RotaryDim = 16, RopeTheta = 10000, Mlp = MlpKind.SwiGlu, TiedEmbeddings = true, BosTokenId = bosTokenId,
    };

    /// <summary>Model card sections specific to the task (task, mechanism expected).</summary>
    public abstract string CardTaskSection { get; }

    protected static string T(int id, WordLevelTokenizer tok) => tok.Words[id];
}

/// <summary>What analysis found in a trained model, with the evidence that it is causal.</summary>
public sealed record MechanismReport(
    IReadOnlyList<NamedHead> Heads,
    IReadOnlyList<TaskMetric> Findings,
    string Markdown);

/// <summary>A head the card names, with its role and score.</summary>
public sealed record NamedHead(int Layer, int Head, string Role, double Score)
{
    public string Label => $"L{Layer}H{Head}";
}
