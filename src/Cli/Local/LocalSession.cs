using InterpMesh.Cli.CommandLine;
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

    /// <summary>Reads --model, --tokenizer, --dtype and --threads, and loads the model.</summary>
    public static LocalSession Open(CliArgs args)
    {
        string model = args.RequireText("model", "a Hugging Face folder or a llama2.c .bin");
        string? tokenizer = args.Text("tokenizer");
        var dtype = ParseDType(args.Text("dtype"));
        string device = args.Text("device") ?? "cpu";
        TorchRuntime.Initialize(args.Int("threads", min: 1));
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

    public static ScalarType ParseDType(string? text) => text switch
    {
        null or "float32" or "f32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "f16" => ScalarType.Float16,
        _ => throw new UsageException($"--dtype must be float32, bfloat16 or float16, got '{text}'"),
    };

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
