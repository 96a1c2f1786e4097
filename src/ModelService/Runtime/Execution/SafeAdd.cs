using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>
/// Tensor addition that is safe under garbage collection. TorchSharp 0.107's <c>a + b</c>,
/// <c>a.add(b)</c> and <c>a.add_(b)</c> make a new <see cref="Scalar"/> alpha = 1 on every call and
/// leave it to its finalizer, which may free it while libtorch is still reading it: under GC
/// pressure (a server streaming activations allocates a lot) the call then fails with libtorch's
/// "Expected false to be true" from <c>Scalar::toFloat</c>, or reads a freed value. Passing one
/// alpha that lives for the whole process avoids that (docs/torchsharp-on-debian.md, "Implicit
/// scalars"; <c>SafeAddTests</c> reproduces the failure).
/// </summary>
internal static class SafeAdd
{
    private static readonly Scalar One = 1;

    /// <summary><paramref name="a"/> + <paramref name="b"/>, a new tensor.</summary>
    public static Tensor Sum(Tensor a, Tensor b) => a.add(b, One);

    /// <summary><paramref name="a"/> += <paramref name="b"/>, in place; returns <paramref name="a"/>.</summary>
    public static Tensor InPlace(Tensor a, Tensor b) => a.add_(b, One);
}
