using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>
/// Process-wide torch set-up: the libstdc++ compatibility shim and oneMKL's CPU dispatch (see
/// docs/torchsharp-on-debian.md), and the intra-op thread count, which must be set once, before any work.
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
            MklCpuDispatch = LoadMklDispatch();
            shimLoaded = true;
        }
    }

    /// <summary>Name of the environment variable that chooses how oneMKL picks its kernels.</summary>
    public const string MklDispatchVariable = "INTERPMESH_MKL_CPU_DISPATCH";

    /// <summary>
    /// How libtorch's oneMKL picks its kernels in this process: <c>features</c> (by the CPU's
    /// AVX2/AVX-512 support, through <c>libmkl-cpu-dispatch.so</c>), <c>vendor</c> (MKL's own
    /// choice, which on AMD processors is its generic path; set <c>INTERPMESH_MKL_CPU_DISPATCH=vendor</c>)
    /// or <c>unavailable</c> (not an x86-64 Linux process, or the build had no gcc to make the library).
    /// </summary>
    public static string MklCpuDispatch { get; private set; } = "unavailable";

    /// <summary>Reads <see cref="MklDispatchVariable"/>: true for <c>features</c> (also when unset), false for <c>vendor</c>.</summary>
    internal static bool ParseMklDispatch(string? choice) => choice switch
    {
        null or "" or "features" => true,
        "vendor" => false,
        _ => throw new InvalidOperationException($"{MklDispatchVariable}='{(choice.Length > 20 ? choice[..20] + "…" : choice)}' is not a choice: use 'features' (the default) or 'vendor'"),
    };

    private static string LoadMklDispatch()
    {
        if (!ParseMklDispatch(Environment.GetEnvironmentVariable(MklDispatchVariable)))
            return "vendor";
        string library = Path.Combine(AppContext.BaseDirectory, "libmkl-cpu-dispatch.so");
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64 || !File.Exists(library))
            return "unavailable";
        if (dlopen(library, RtldNow | RtldGlobal) == IntPtr.Zero)
            throw new InvalidOperationException($"{library}: could not be loaded ({Marshal.PtrToStringAnsi(dlerror())}); rebuild, or set {MklDispatchVariable}=vendor; see docs/torchsharp-on-debian.md");
        return "features";
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
