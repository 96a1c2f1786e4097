using System.Diagnostics;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.ToyModels.Tasks;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace InterpMesh.ToyModels.Training;

/// <summary>Progress of one training run, reported every few steps.</summary>
public sealed record TrainingProgress(int Step, int Steps, double Loss, double LearningRate, TimeSpan Elapsed);

/// <summary>Settings of one training run.</summary>
public sealed record TrainingOptions(int Steps, int BatchSize, double LearningRate, long Seed, int ReportEvery = 50)
{
    public static TrainingOptions From(TrainingDefaults d) => new(d.Steps, d.BatchSize, d.LearningRate, d.Seed);

    public void Validate()
    {
        if (Steps < 1) throw new ArgumentException($"steps must be at least 1, got {Steps}");
        if (BatchSize < 1) throw new ArgumentException($"batch size must be at least 1, got {BatchSize}");
        if (!(LearningRate > 0 && LearningRate < 1)) throw new ArgumentException($"learning rate must be in (0, 1), got {LearningRate}");
    }
}

/// <summary>
/// Trains a toy model with the runtime's own forward (the same code that serves it): AdamW,
/// linear warm-up then cosine decay to 10%, gradient clipping at 1. Deterministic for a seed and a
/// thread count: weights come from a seeded torch generator and data from a seeded
/// <see cref="Random"/>.
/// </summary>
public static class ToyTrainer
{
    public static Transformer Train(ToyTask task, TrainingOptions options, Action<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        TorchRuntime.Initialize();
        var c = task.Config;
        TransformerWeights weights;
        using (var gen = new torch.Generator((ulong)options.Seed))
            weights = InitialWeights(c, gen);
        var model = new Transformer(c, weights, $"toy:{task.Name}");
        // The tied unembedding is a view of the embedding (a Parameter), which its gradient reaches.
        var parameters = weights.AllTensors().OfType<Parameter>().ToList();
        using var optimizer = new AdamW(parameters, 0.9, 0.98, 1e-8, weightDecay: 0.01);
        var rng = new Random(unchecked((int)options.Seed));
        var clock = Stopwatch.StartNew();
        int warmup = Math.Max(1, options.Steps / 20);
        double smoothed = double.NaN;

        using (torch.enable_grad())
        {
            for (int step = 1; step <= options.Steps; step++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                double lr = options.LearningRate * (step <= warmup
                    ? (double)step / warmup
                    : 0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * (step - warmup) / Math.Max(1, options.Steps - warmup))));

                using var scope = NewDisposeScope();
                var batch = task.Sample(rng, options.BatchSize);
                var ids = tensor(batch.Ids, [batch.Batch, batch.Length]);
                var targets = tensor(batch.Targets, [batch.Batch, batch.Length]);
                var logits = model.Forward(ids, null, HookPlan.Empty, null, LogitsMode.All)!;
                var loss = F.cross_entropy(logits.reshape(-1, c.VocabSize), targets.reshape(-1), ignore_index: -100);
                optimizer.ZeroGrad();
                loss.backward();
                nn.utils.clip_grad_norm_(parameters, 1.0);
                optimizer.Step(lr);

                double value = loss.item<float>();
                smoothed = double.IsNaN(smoothed) ? value : 0.95 * smoothed + 0.05 * value;
                if (progress is not null && (step % options.ReportEvery == 0 || step == options.Steps))
                    progress(new TrainingProgress(step, options.Steps, smoothed, lr, clock.Elapsed));
            }
        }
        foreach (var p in parameters)
            p.requires_grad = false;
        return model;
    }

    /// <summary>GPT-2-style initialisation: N(0, 0.02), output projections scaled by 1/√(2·layers), norms 1, biases 0.</summary>
    internal static TransformerWeights InitialWeights(ModelConfig c, torch.Generator gen)
    {
        double outStd = 0.02 / Math.Sqrt(2.0 * c.NLayers);
        Parameter N(double std, params long[] shape) => new(Scalars.MulValue(randn(shape, generator: gen), std));
        // Linear weights are drawn [out, in] (as before the compute layout existed, so a seed gives the
        // same model) and stored [in, out].
        Parameter L(double std, long outputs, long inputs) => new(Scalars.MulValue(randn([outputs, inputs], generator: gen), std).t().contiguous());
        Parameter Ones(long n) => new(ones(n));
        Parameter Zeros(long n) => new(zeros(n));
        bool ln = c.Norm == NormKind.LayerNorm;
        long qkv = (long)(c.NHeads + 2 * c.NKvHeads) * c.DHead;
        long mlpIn = c.Mlp == MlpKind.SwiGlu ? 2L * c.DMlp : c.DMlp;
        var embed = N(0.02, c.VocabSize, c.DModel);
        return new TransformerWeights
        {
            Embed = embed,
            PosEmbed = c.Positional == PositionalKind.Learned ? N(0.01, c.ContextLength, c.DModel) : null,
            Blocks = Enumerable.Range(0, c.NLayers).Select(_ => new BlockWeights
            {
                Ln1Weight = Ones(c.DModel),
                Ln1Bias = ln ? Zeros(c.DModel) : null,
                Qkv = L(0.02, qkv, c.DModel),
                QkvBias = ln ? Zeros(qkv) : null,
                Out = L(outStd, c.DModel, (long)c.NHeads * c.DHead),
                OutBias = ln ? Zeros(c.DModel) : null,
                Ln2Weight = Ones(c.DModel),
                Ln2Bias = ln ? Zeros(c.DModel) : null,
                MlpIn = L(0.02, mlpIn, c.DModel),
                MlpInBias = ln ? Zeros(mlpIn) : null,
                MlpOut = L(outStd, c.DModel, c.DMlp),
                MlpOutBias = ln ? Zeros(c.DModel) : null,
            }).ToList(),
            LnFinalWeight = Ones(c.DModel),
            LnFinalBias = ln ? Zeros(c.DModel) : null,
            Unembed = embed.t(),
            Tied = true,
        };
    }
}
