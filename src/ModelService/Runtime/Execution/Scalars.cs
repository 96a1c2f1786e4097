using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>
/// Scalars that outlive the native calls reading them. TorchSharp 0.107 turns a number passed to a
/// <see cref="Scalar"/> parameter (<c>x * 0.5</c>, <c>x - 1</c>, <c>fill_(true)</c>,
/// <c>masked_fill(m, -∞)</c>, <c>full(n, v)</c>, <c>arange(n)</c>, <c>x.eq(3)</c>) into a new native
/// Scalar, and <c>a + b</c>, <c>a.add(b)</c>, <c>a.add_(b)</c>, <c>x + 1</c> make one more for
/// alpha = 1; nothing keeps it alive once its handle is read, so a garbage collection during the
/// native call can run its finalizer and free it while libtorch reads it ("Expected false to be
/// true" from <c>Scalar::toFloat</c>, or a wrong value; docs/torchsharp-on-debian.md, "Implicit
/// scalars"; <c>ScalarsTests</c> reproduces it).
/// </summary>
/// <remarks>
/// Production code passes either one of these process-lifetime constants (never disposed), a
/// per-call value as <c>using var s = (Scalar)value;</c> (disposed after the call, so alive during
/// it), or goes through the helpers below. Tensor − tensor (<c>a - b</c>, <c>sub</c>) makes no
/// scalar in 0.107 and needs nothing.
/// </remarks>
public static class Scalars
{
    /// <summary>The integer 1: the alpha of every tensor addition.</summary>
    public static readonly Scalar One = 1;
    /// <summary>The integer 0.</summary>
    public static readonly Scalar Zero = 0;
    /// <summary>The integer 2 (squares: <c>pow(Scalars.Two)</c>).</summary>
    public static readonly Scalar Two = 2;
    /// <summary>The double 0.0.</summary>
    public static readonly Scalar ZeroReal = 0.0;
    /// <summary>true, to fill boolean masks.</summary>
    public static readonly Scalar True = true;
    /// <summary>false, to fill boolean masks.</summary>
    public static readonly Scalar False = false;
    /// <summary>−∞ (masked attention scores and logits).</summary>
    public static readonly Scalar NegativeInfinity = double.NegativeInfinity;

    /// <summary><paramref name="a"/> + <paramref name="b"/>, a new tensor.</summary>
    public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

    /// <summary><paramref name="a"/> += <paramref name="b"/>, in place; returns <paramref name="a"/>.</summary>
    public static Tensor AddInPlace(Tensor a, Tensor b) => a.add_(b, One);

    /// <summary>
    /// <paramref name="a"/> + <paramref name="value"/>, a new tensor. A number converted at the call
    /// keeps its C# type (an int adds an integer scalar) and is kept alive until the sum is made.
    /// </summary>
    public static Tensor AddValue(Tensor a, Scalar value)
    {
        var sum = a.add(value, One);
        GC.KeepAlive(value);
        return sum;
    }

    /// <summary><paramref name="a"/> − <paramref name="value"/>, a new tensor (the value is kept alive as in <see cref="AddValue"/>).</summary>
    public static Tensor SubValue(Tensor a, Scalar value)
    {
        var difference = a.sub(value);
        GC.KeepAlive(value);
        return difference;
    }

    /// <summary><paramref name="a"/> · <paramref name="value"/>, a new tensor (the value is kept alive as in <see cref="AddValue"/>).</summary>
    public static Tensor MulValue(Tensor a, Scalar value)
    {
        var product = a.mul(value);
        GC.KeepAlive(value);
        return product;
    }

    /// <summary><paramref name="a"/> / <paramref name="value"/>, a new tensor (the value is kept alive as in <see cref="AddValue"/>).</summary>
    public static Tensor DivValue(Tensor a, Scalar value)
    {
        var quotient = a.div(value);
        GC.KeepAlive(value);
        return quotient;
    }

    /// <summary><c>arange(start, stop)</c> of <paramref name="dtype"/> on <paramref name="device"/>, step 1.</summary>
    public static Tensor Arange(long start, long stop, ScalarType dtype, Device device)
    {
        using Scalar from = start, to = stop;
        return arange(from, to, One, dtype, device);
    }

    /// <summary><c>arange(0, stop)</c> of <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    public static Tensor Arange(long stop, ScalarType dtype, Device device) => Arange(0, stop, dtype, device);
}
