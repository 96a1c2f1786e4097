using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>
/// Process-wide torch set-up: the libstdc++ compatibility shim (see docs/torchsharp-on-debian.md)
/// and the intra-op thread count, which must be set once, before any work.
/// </summary>
public static class TorchRuntime
{
    private const int RtldNow = 0x002;
    private const int RtldGlobal = 0x100;
    private static readonly Lock Gate = new();
    private static bool shimLoaded;
    private static int? threads;

    /// <summary>
    /// Loads <c>libglibcxx-shim.so</c> globally when the build placed one beside the app (only on
    /// hosts whose libstdc++ lacks GLIBCXX_3.4.32). Runs when this assembly loads, i.e. before any
    /// torch call made through the runtime.
    /// </summary>
#pragma warning disable CA2255 // The shim must be in place before TorchSharp's static constructor runs.
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void LoadCompatibilityShim()
    {
        lock (Gate)
        {
            if (shimLoaded || !OperatingSystem.IsLinux())
                return;
            string shim = Path.Combine(AppContext.BaseDirectory, "libglibcxx-shim.so");
            if (File.Exists(shim) && dlopen(shim, RtldNow | RtldGlobal) == IntPtr.Zero)
                throw new InvalidOperationException($"{shim}: could not be loaded ({Marshal.PtrToStringAnsi(dlerror())}); rebuild, see docs/torchsharp-on-debian.md");
            shimLoaded = true;
        }
    }

    /// <summary>
    /// Sets torch's intra-op thread count once per process (changing it later halves throughput).
    /// A second call with a different count is ignored and returns the count in force.
    /// </summary>
    public static int Initialize(int? intraOpThreads = null)
    {
        LoadCompatibilityShim();
        lock (Gate)
        {
            if (threads is null)
            {
                if (intraOpThreads is > 0)
                    set_num_threads(intraOpThreads.Value);
                threads = get_num_threads();
            }
            return threads.Value;
        }
    }

    [DllImport("libc", EntryPoint = "dlopen", CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern IntPtr dlopen(string file, int mode);

    [DllImport("libc", EntryPoint = "dlerror")]
    private static extern IntPtr dlerror();
}
