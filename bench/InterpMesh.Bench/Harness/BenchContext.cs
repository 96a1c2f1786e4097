using System.CommandLine;
using System.Globalization;
using System.Text.RegularExpressions;
using InterpMesh.Hosting;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Bench.Harness;

/// <summary>
/// What a running benchmark gets from the harness: its parsed options, the torch thread count, the
/// checkout, and the one place that builds what several benchmarks need — random-weights models
/// of a preset shape in temporary folders, and model services and gateways in this process on
/// loopback. Everything started or created here is stopped and deleted when the benchmark ends
/// (<see cref="Dispose"/>), also when it fails.
/// </summary>
internal sealed partial class BenchContext : IDisposable
{
    private readonly ParseResult parse;
    private readonly List<WebApplication> started = [];
    private readonly List<string> folders = [];
    private int? threads;

    public BenchContext(ParseResult parse, TextWriter stdout, bool json, int? requestedThreads)
    {
        this.parse = parse;
        Out = stdout;
        Json = json;
        RequestedThreads = requestedThreads;
    }

    /// <summary>Where progress lines go (the report itself is printed by the harness).</summary>
    public TextWriter Out { get; }

    /// <summary><c>--json</c> was given: print nothing but the report.</summary>
    public bool Json { get; }

    /// <summary><c>--threads</c> as given (null: not given).</summary>
    public int? RequestedThreads { get; }

    /// <summary>libtorch's intra-op threads in this process, set from <c>--threads</c> on first use (before any torch work).</summary>
    public int Threads => threads ??= TorchRuntime.Initialize(RequestedThreads);

    /// <summary>The value of one of this benchmark's options.</summary>
    public T Get<T>(Option<T> option) => parse.GetValue(option)!;

    /// <summary>The checkout this binary was built from (benchmarks read models/, bench/ and the built plugins/).</summary>
    public static string Repository()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "InterpMesh.sln")))
                return d.FullName;
        }
        throw new BenchUsageException("this benchmark runs from a checkout (it needs models/, bench/ and the built plugins/): build and run it with `dotnet run -c Release --project bench/InterpMesh.Bench -- ...`");
    }

    /// <summary>
    /// A new empty folder under the system's temporary folder, named after this process
    /// (<c>interpmesh-bench-p&lt;pid&gt;-&lt;guid&gt;</c>, the pattern the tests sweep when a run was killed);
    /// deleted when the benchmark ends.
    /// </summary>
    public string TempFolder()
    {
        string path = Path.Combine(Path.GetTempPath(), $"interpmesh-bench-p{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        folders.Add(path);
        return path;
    }

    /// <summary>A random-weights model of a preset's shape (seed 1234) in a temporary folder; returns the folder.</summary>
    public string RandomModel(string preset)
    {
        string dir = TempFolder();
        SaveRandomModel(preset, dir);
        return dir;
    }

    /// <summary>Writes a random-weights model of a preset's shape in the Hugging Face layout (seed 1234) to <paramref name="dir"/>.</summary>
    public static void SaveRandomModel(string preset, string dir)
    {
        var config = Presets.Config(preset);
        using var worker = new TorchWorker();
        worker.Run(() =>
        {
            using var model = Presets.CreateRandom(config, seed: 1234);
            InterpMesh.ToyModels.Export.HfCheckpointWriter.Save(model, dir);
            return 0;
        });
    }

    /// <summary>Starts a model service for <paramref name="modelPath"/> with <see cref="Threads"/> threads and waits until the model is loaded.</summary>
    public WebApplication StartModelService(string modelPath, IReadOnlyDictionary<string, string?>? settings = null)
    {
        var all = new Dictionary<string, string?>
        {
            ["ModelService:ModelPath"] = modelPath,
            ["ModelService:Threads"] = Threads.ToString(CultureInfo.InvariantCulture),
        };
        foreach (var (key, value) in settings ?? new Dictionary<string, string?>())
            all[key] = value;
        return Started(LocalHosts.StartModelServiceAsync(all).GetAwaiter().GetResult());
    }

    /// <summary>
    /// Starts an analysis worker running the plugins in <paramref name="pluginsPath"/> against one
    /// model service and a gateway in front of it, sharing the job store and artifacts under
    /// <paramref name="dataDir"/>, no auth and no rate limit. <paramref name="settings"/> under
    /// <c>Worker:</c> go to the worker, the others to the gateway. Both are stopped when the
    /// benchmark ends; the gateway is returned.
    /// </summary>
    public WebApplication StartGateway(string modelAddress, string pluginsPath, string dataDir, IReadOnlyDictionary<string, string?>? settings = null)
    {
        var models = new Dictionary<string, string> { ["bench"] = modelAddress };
        var worker = LocalHosts.WorkerSettings(models, pluginsPath, dataDir);
        var all = LocalHosts.GatewaySettings(models, dataDir);
        worker["Logging:LogLevel:Default"] = "Error";
        all["Logging:LogLevel:Default"] = "Error";
        foreach (var (key, value) in settings ?? new Dictionary<string, string?>())
        {
            if (key.StartsWith("Worker:", StringComparison.Ordinal))
                worker[key] = value;
            else
                all[key] = value;
        }
        Started(LocalHosts.StartWorkerAsync(worker).GetAwaiter().GetResult());
        return Started(LocalHosts.StartGatewayAsync(all).GetAwaiter().GetResult());
    }

    /// <summary>Stops hosts now, in the order given (a gateway before the service behind it).</summary>
    public void Stop(params WebApplication[] apps)
    {
        foreach (var app in apps)
            started.Remove(app);
        LocalHosts.StopAsync(apps).GetAwaiter().GetResult();
    }

    /// <summary>Stops what is still running (latest first) and deletes the temporary folders.</summary>
    public void Dispose()
    {
        var running = Enumerable.Reverse(started).ToArray();
        started.Clear();
        LocalHosts.StopAsync(running).GetAwaiter().GetResult();
        foreach (var folder in folders)
        {
            if (Directory.Exists(folder))
                Directory.Delete(folder, recursive: true);
        }
        folders.Clear();
    }

    /// <summary>The names <see cref="TempFolder"/> gives (for the tests' orphan sweep and their checks).</summary>
    [GeneratedRegex(@"^interpmesh-bench-p(\d+)-[0-9a-f]{32}$")]
    public static partial Regex TempFolderName();

    private WebApplication Started(WebApplication app)
    {
        started.Add(app);
        return app;
    }
}
