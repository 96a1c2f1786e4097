using InterpMesh.Engine;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Local;

/// <summary>
/// A model loaded in this process, the torch worker thread that loads and frees it, and (on first
/// use) the <see cref="ModelEngine"/> that runs requests on it, as the model service would.
/// </summary>
internal sealed class LocalSession : IDisposable
{
    private ModelEngine? engine;

    private LocalSession(TorchWorker worker, LoadedModel model)
    {
        Worker = worker;
        Model = model;
    }

    public TorchWorker Worker { get; }
    public LoadedModel Model { get; }

    /// <summary>The engine serving <see cref="Model"/> in this process (started on first use; one torch thread).</summary>
    public ModelEngine Engine => engine ??= new ModelEngine(Model, new EngineOptions { MaxConcurrentRequests = 1 });

    /// <summary>Loads <paramref name="model"/> on a torch worker thread (<paramref name="threads"/>: libtorch's intra-op threads, null for its default).</summary>
    public static LocalSession Open(string model, string? tokenizer, ScalarType dtype, string device, int? threads)
    {
        TorchRuntime.Initialize(threads);
        var worker = new TorchWorker();
        try
        {
            var loaded = worker.Run(() => ModelLoader.Load(model, tokenizer, dtype, device));
            return new LocalSession(worker, loaded);
        }
        catch
        {
            worker.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        engine?.Dispose();
        Worker.Run(() =>
        {
            Model.Dispose();
            return 0;
        });
        Worker.Dispose();
    }
}
