using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Support;

/// <summary>Models shipped in the repo, loaded once per test class.</summary>
public sealed class ShippedModels : IDisposable
{
    public ShippedModels()
    {
        TorchRuntime.Initialize();
        using var scope = NewDisposeScope();
        StoriesBin = ModelLoader.Load(RepoPaths.Models("stories260K/stories260K.bin"));
        StoriesHf = ModelLoader.Load(RepoPaths.Models("stories260K-hf"));
        Gpt2Tiny = ModelLoader.Load(RepoPaths.Fixture("gpt2-tiny"));
    }

    public LoadedModel StoriesBin { get; }
    public LoadedModel StoriesHf { get; }
    public LoadedModel Gpt2Tiny { get; }

    public IEnumerable<LoadedModel> All => [StoriesBin, StoriesHf, Gpt2Tiny];

    public void Dispose()
    {
        foreach (var m in All)
            m.Dispose();
    }
}
