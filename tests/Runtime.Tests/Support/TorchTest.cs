using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Support;

/// <summary>Base for tests that run torch code on the test thread: a dispose scope and inference mode per test.</summary>
public abstract class TorchTest : IDisposable
{
    private readonly IDisposable mode;
    private readonly DisposeScope scope;

    protected TorchTest()
    {
        TorchRuntime.Initialize();
        mode = inference_mode();
        scope = NewDisposeScope();
    }

    public void Dispose()
    {
        scope.Dispose();
        mode.Dispose();
        GC.SuppressFinalize(this);
    }

    protected static Tensor Ids(params int[] ids) => tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);

    protected static double MaxAbsDiff(Tensor a, Tensor b) =>
        (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>();
}

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
