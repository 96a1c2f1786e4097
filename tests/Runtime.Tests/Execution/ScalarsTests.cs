using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Execution;

/// <summary>
/// TorchSharp 0.107's <c>a + b</c> and <c>a.add_(b)</c> create a Scalar alpha per call that its
/// finalizer may free while libtorch reads it. With a thread forcing collections, the implicit form
/// failed within 10 000–20 000 calls on this machine ("Expected false to be true" from
/// Scalar::toFloat; measured while writing this test — the failing form is not run here, because a
/// freed scalar can also corrupt the test host). The forward's additions go through
/// <see cref="Scalars"/>: they must survive many times that many calls, with the right values.
/// </summary>
public sealed class ScalarsTests
{
    private const int Calls = 100_000;

    private static void UnderCollections(Action body)
    {
        bool stop = false;
        var collector = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        });
        collector.Start();
        try
        {
            body();
        }
        finally
        {
            Volatile.Write(ref stop, true);
            collector.Join();
        }
    }

    [Fact]
    public void The_forwards_linear_with_bias_survives_collections_and_adds_the_bias()
    {
        using var x = randn(4, 16, generator: new TorchSharp.torch.Generator(1));
        using var w = randn(16, 16, generator: new TorchSharp.torch.Generator(2));
        using var b = randn(16, generator: new TorchSharp.torch.Generator(3));
        // A second computation: the product, then the bias added row by row as floats.
        using var product = x.matmul(w);
        var expected = product.data<float>().ToArray();
        var bias = b.data<float>().ToArray();
        for (int i = 0; i < expected.Length; i++)
            expected[i] += bias[i % 16];
        float[]? last = null;
        UnderCollections(() =>
        {
            for (int i = 0; i < Calls; i++)
            {
                using var y = Transformer.Linear(x, w, b);
                if (i == Calls - 1)
                    last = y.data<float>().ToArray();
            }
        });
        Assert.NotNull(last);
        for (int i = 0; i < expected.Length; i++)
            Assert.Equal(expected[i], last![i], 4);
    }

    [Fact]
    public void Sums_and_in_place_sums_survive_collections()
    {
        using var a = ones(8, 8);
        using var b = full(8, 8, 2f);
        float total = 0;
        UnderCollections(() =>
        {
            for (int i = 0; i < Calls; i++)
            {
                using var sum = Scalars.Add(a, b);
                Scalars.AddInPlace(sum, b);
                if (i == Calls - 1)
                    total = sum.sum().item<float>();
            }
        });
        Assert.Equal(8 * 8 * 5f, total);
    }
}
