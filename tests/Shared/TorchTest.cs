using InterpMesh.Runtime.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Tests;

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
