using InterpMesh.Cli.Serve;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Cli.Bench;

/// <summary>Benchmark set-up: random-weights models and the local mesh (<see cref="LocalMesh"/>) with one model.</summary>
internal static class BenchMesh
{
    /// <summary>The checkout this binary was built from (benchmarks read models/, bench/ and the built plugins/).</summary>
    public static string Repository() => LocalMesh.Repository();

    /// <summary>Writes a random-weights model of a preset's shape in the Hugging Face layout (seed 1234).</summary>
    public static void SaveRandomModel(InterpMesh.Runtime.Architectures.ModelConfig config, string dir)
    {
        using var worker = new InterpMesh.Runtime.Execution.TorchWorker();
        worker.Run(() =>
        {
            using var model = InterpMesh.Runtime.Architectures.Presets.CreateRandom(config, seed: 1234);
            InterpMesh.ToyModels.Export.HfCheckpointWriter.Save(model, dir);
            return 0;
        });
    }

    public static WebApplication StartModelService(string modelPath, int threads, Dictionary<string, string?>? extra = null) =>
        LocalMesh.StartModelService(modelPath, threads, extra: extra);

    /// <summary>A gateway without auth or rate limits in front of one model service.</summary>
    public static WebApplication StartGateway(string modelAddress, string pluginsPath, string dataDir) =>
        LocalMesh.StartGateway(new Dictionary<string, string> { ["bench"] = modelAddress }, pluginsPath, dataDir);

    public static void Stop(params WebApplication[] apps) => LocalMesh.Stop(apps);
}
