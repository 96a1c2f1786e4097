using System.Diagnostics;
using System.Security.Cryptography;
using InterpMesh.Runtime.Tests.Support;

namespace InterpMesh.Runtime.Tests.Execution;

/// <summary>The build step that makes TorchSharp load on hosts with an older libstdc++ (docs/torchsharp-on-debian.md).</summary>
public sealed class TorchSharpCompatTests
{
    private static readonly string Script = Path.Combine(RepoPaths.Root, "build", "torchsharp-compat", "apply.sh");
    private static readonly string OutputLib = Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so");

    private static (int Code, string Output) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }

    private static string? WeakFlag(string lib)
    {
        var (code, output) = Run("readelf", "-V", lib);
        Assert.True(code == 0, $"readelf failed: {output}");
        var line = output.Split('\n').FirstOrDefault(l => l.Contains("Name: GLIBCXX_3.4.32", StringComparison.Ordinal));
        return line is null ? null : line.Contains("Flags: WEAK", StringComparison.Ordinal) ? "weak" : "strong";
    }

    private static bool HostHasGlibcxx3432()
    {
        var (_, ldconfig) = Run("/sbin/ldconfig", "-p");
        string lib = ldconfig.Split('\n').Where(l => l.Contains("libstdc++.so.6 (libc6,x86-64)", StringComparison.Ordinal))
            .Select(l => l.Split("=>")[1].Trim()).First();
        return File.ReadAllText(lib, System.Text.Encoding.Latin1).Contains("GLIBCXX_3.4.32", StringComparison.Ordinal);
    }

    [Fact]
    public void Build_output_is_patched_only_where_the_host_needs_it_and_torch_loads()
    {
        Assert.True(File.Exists(OutputLib), $"{OutputLib} is missing: the test project should carry TorchSharp's natives");
        bool needsPatch = !HostHasGlibcxx3432();
        Assert.Equal(needsPatch ? "weak" : "strong", WeakFlag(OutputLib));
        Assert.Equal(needsPatch, File.Exists(Path.Combine(AppContext.BaseDirectory, "libglibcxx-shim.so")));
        // And torch works in this process.
        InterpMesh.Runtime.Execution.TorchRuntime.Initialize();
        using var t = TorchSharp.torch.ones(3);
        Assert.Equal(3.0f, t.sum().item<float>());
    }

    private delegate int MklQuery();

    [Fact]
    public void Mkl_picks_its_kernels_by_cpu_features_where_the_dispatch_library_is_built()
    {
        InterpMesh.Runtime.Execution.TorchRuntime.Initialize();
        using (var product = TorchSharp.torch.ones(64, 64).matmul(TorchSharp.torch.ones(64, 64)))
            Assert.Equal(64.0f, product[0, 0].item<float>());
        Assert.Equal(System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64,
            File.Exists(Path.Combine(AppContext.BaseDirectory, "libmkl-cpu-dispatch.so")));
        if (System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture != System.Runtime.InteropServices.Architecture.X64)
        {
            Assert.Equal("unavailable", InterpMesh.Runtime.Execution.TorchRuntime.MklCpuDispatch);
            return;
        }
        Assert.Equal("features", InterpMesh.Runtime.Execution.TorchRuntime.MklCpuDispatch);
        // MKL's own answer to "which code path": 0 is its generic path, which it takes on AMD
        // processors unless the vendor check is replaced; any CPU with AVX2 must get more.
        var torchCpu = System.Runtime.InteropServices.NativeLibrary.Load(Path.Combine(AppContext.BaseDirectory, "libtorch_cpu.so"));
        var detect = System.Runtime.InteropServices.Marshal.GetDelegateForFunctionPointer<MklQuery>(
            System.Runtime.InteropServices.NativeLibrary.GetExport(torchCpu, "mkl_serv_cpu_detect"));
        int path = detect();
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported)
            Assert.True(path > 0, $"MKL chose its generic code path ({path}) on a CPU with AVX2");
    }

    [Theory]
    [InlineData(null, true)]
    [InlineData("", true)]
    [InlineData("features", true)]
    [InlineData("vendor", false)]
    public void The_mkl_dispatch_setting_is_read(string? value, bool features)
        => Assert.Equal(features, InterpMesh.Runtime.Execution.TorchRuntime.ParseMklDispatch(value));

    [Fact]
    public void A_wrong_mkl_dispatch_setting_names_the_variable_and_the_choices()
    {
        var e = Assert.Throws<InvalidOperationException>(() => InterpMesh.Runtime.Execution.TorchRuntime.ParseMklDispatch("intel-please-and-a-very-long-value"));
        Assert.Contains("INTERPMESH_MKL_CPU_DISPATCH='intel-please-and-a-v…'", e.Message);
        Assert.Contains("'features'", e.Message);
        Assert.Contains("'vendor'", e.Message);
    }

    [Fact]
    public void The_nuget_cache_copy_is_never_modified()
    {
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string cached = Path.Combine(packages, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(cached), $"expected the restored TorchSharp package at {cached}");
        Assert.Equal("strong", WeakFlag(cached));
    }

    [Fact]
    public void Applying_the_fix_twice_changes_nothing_the_second_time()
    {
        using var dir = new TempFolder();
        string lib = dir.File("libLibTorchSharp.so");
        string tools = dir.File("tools");
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        File.Copy(Path.Combine(packages, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so"), lib);
        bool needsPatch = !HostHasGlibcxx3432();

        var first = Run("bash", Script, dir.Path, tools);
        Assert.True(first.Code == 0, first.Output);
        var afterFirst = SHA256.HashData(File.ReadAllBytes(lib));
        var second = Run("bash", Script, dir.Path, tools);
        Assert.True(second.Code == 0, second.Output);
        Assert.Equal(afterFirst, SHA256.HashData(File.ReadAllBytes(lib)));
        Assert.Equal(needsPatch ? "weak" : "strong", WeakFlag(lib));
        Assert.DoesNotContain("marked", second.Output);
    }
}
