using InterpMesh.Engine;
using InterpMesh.ModelService.Wire;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;

namespace InterpMesh.Plugins.Testing;

/// <summary>
/// A model served in the test's own process: loaded by the model service's loaders, run by the
/// model service's engine (batching, captures, interventions, generation) and reached through the
/// SDK's <see cref="IModelClient"/>, with the same messages and the same errors
/// (<see cref="Grpc.Core.RpcException"/>s such as INVALID_ARGUMENT) a plugin sees behind the gateway.
/// Dispose it when the test ends.
/// </summary>
public sealed class TestModel : IDisposable
{
    private readonly TorchWorker worker;
    private readonly LoadedModel model;
    private readonly ModelEngine engine;

    private TestModel(TorchWorker worker, LoadedModel model, string name)
    {
        this.worker = worker;
        this.model = model;
        engine = new ModelEngine(model, new EngineOptions());
        Client = new InProcessModelClient(engine, name);
    }

    /// <summary>The model, as a plugin's <see cref="IAnalysisContext.Model"/> sees it.</summary>
    public IModelClient Client { get; }

    /// <summary>
    /// Loads a checkpoint: a Hugging Face folder (config.json + safetensors) or a llama2.c <c>.bin</c>,
    /// with its tokenizer found beside it or given by <paramref name="tokenizer"/>.
    /// </summary>
    /// <param name="path">The checkpoint.</param>
    /// <param name="tokenizer">A tokenizer file, when none lies beside the checkpoint.</param>
    /// <param name="name">The model's name as <see cref="IModelClient.Name"/> reports it.</param>
    /// <param name="threads">libtorch's intra-op threads (null: libtorch's default).</param>
    public static TestModel Load(string path, string? tokenizer = null, string name = "test-model", int? threads = 1) =>
        Start(() => ModelLoader.Load(path, tokenizer), name, threads);

    /// <summary>
    /// A model with random weights and no tokenizer (send token ids): one of
    /// <see cref="Presets.Names"/> (<c>llama-tiny</c>, <c>gpt2-tiny</c>, <c>gpt2-small</c>).
    /// </summary>
    public static TestModel Random(string preset = "llama-tiny", long seed = 0, string name = "test-model", int? threads = 1)
    {
        if (!Presets.Names.Contains(preset))
            throw new ArgumentException($"unknown preset '{(preset.Length > 40 ? preset[..40] + "…" : preset)}'; use one of {string.Join(", ", Presets.Names)}", nameof(preset));
        return Start(() => new LoadedModel(Presets.CreateRandom(Presets.Config(preset), seed), null, $"preset {preset}"), name, threads);
    }

    /// <summary>A fresh recording context over this model (and a new in-memory artifact store unless one is given).</summary>
    public TestAnalysisContext NewContext(IArtifactStore? artifacts = null, CancellationToken cancellation = default) =>
        new(Client, artifacts, cancellation);

    private static TestModel Start(Func<LoadedModel> load, string name, int? threads)
    {
        TorchRuntime.Initialize(threads);
        var worker = new TorchWorker();
        try
        {
            return new TestModel(worker, worker.Run(load), name);
        }
        catch
        {
            worker.Dispose();
            throw;
        }
    }

    /// <summary>Stops the engine and frees the model.</summary>
    public void Dispose()
    {
        engine.Dispose();
        worker.Run(() =>
        {
            model.Dispose();
            return 0;
        });
        worker.Dispose();
    }
}
