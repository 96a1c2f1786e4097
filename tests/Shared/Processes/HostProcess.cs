using System.Diagnostics;
using System.Globalization;
using Grpc.Health.V1;

namespace InterpMesh.Tests;

/// <summary>
/// One InterpMesh host (model service, gateway, analysis worker) as its own OS process on loopback,
/// started from its apphost built beside the tests (<c>X --Key=Value …</c>) in an empty working
/// folder (the appsettings.json files copied beside the tests belong to the apps), so a
/// test can kill it the way a node failure or an OOM kill does (SIGKILL) or stop it the way
/// Kubernetes does (SIGTERM). Its output is kept (the last lines) for failure messages; anything
/// still running is killed at dispose.
/// </summary>
public sealed class HostProcess : IAsyncDisposable
{
    private const int KeptLines = 400;
    private readonly Process process;
    private readonly Queue<string> lines = new();

    private HostProcess(string name, Process process)
    {
        Name = name;
        this.process = process;
    }

    /// <summary>What the test calls this process in messages ("gateway A", "worker 2").</summary>
    public string Name { get; }

    public int Id => process.Id;

    public bool HasExited => process.HasExited;

    public int ExitCode => process.ExitCode;

    /// <summary>The last lines the process wrote (stdout and stderr interleaved).</summary>
    public string Output
    {
        get
        {
            lock (lines)
                return string.Join('\n', lines);
        }
    }

    /// <summary>
    /// Starts <paramref name="app"/> (an apphost in the test's output folder, e.g.
    /// <c>InterpMesh.Gateway</c>) with <paramref name="settings"/> as command-line configuration
    /// and <paramref name="environment"/> added to this process's environment.
    /// </summary>
    public static HostProcess Start(string name, string app, IEnumerable<KeyValuePair<string, string?>> settings, IReadOnlyDictionary<string, string>? environment = null)
    {
        string path = Path.Combine(AppContext.BaseDirectory, app);
        if (!File.Exists(path))
            throw new FileNotFoundException($"{app} is not in the test output folder {AppContext.BaseDirectory}; the test project must reference its project", path);
        var psi = new ProcessStartInfo(path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = TempFolders.Create("interpmesh-proc-"),
        };
        foreach (var (key, value) in settings)
        {
            if (value is not null)
                psi.ArgumentList.Add($"--{key}={value}");
        }
        psi.Environment["DOTNET_ENVIRONMENT"] = "Production";
        psi.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
            psi.Environment[key] = value;
        var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {name}");
        var host = new HostProcess(name, process);
        process.OutputDataReceived += (_, e) => host.Keep(e.Data);
        process.ErrorDataReceived += (_, e) => host.Keep(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return host;
    }

    private void Keep(string? line)
    {
        if (line is null)
            return;
        lock (lines)
        {
            lines.Enqueue(line);
            while (lines.Count > KeptLines)
                lines.Dequeue();
        }
    }

    /// <summary>Waits until the gRPC health service at <paramref name="address"/> says SERVING; fails with the output if the process exits first.</summary>
    public async Task WaitHealthyAsync(string address, TimeSpan timeout)
    {
        using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(address);
        var health = new Health.HealthClient(channel);
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            if (process.HasExited)
                throw new InvalidOperationException($"{Name} exited with {process.ExitCode} before it served:\n{Output}");
            try
            {
                var reply = await health.CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.AddSeconds(2));
                if (reply.Status == HealthCheckResponse.Types.ServingStatus.Serving)
                    return;
            }
            catch (Grpc.Core.RpcException)
            {
            }
            if (deadline.Elapsed > timeout)
                throw new TimeoutException($"{Name} did not serve at {address} within {timeout.TotalSeconds:0} s:\n{Output}");
            await Task.Delay(100);
        }
    }

    /// <summary>SIGKILL: the process ends at once, with no chance to hand anything back.</summary>
    public void Kill()
    {
        if (!process.HasExited)
            process.Kill(entireProcessTree: true);
        process.WaitForExit();
    }

    /// <summary>SIGTERM, as Kubernetes stops a pod; waits for the exit (then kills) and returns the exit code.</summary>
    public async Task<int> StopAsync(TimeSpan timeout)
    {
        if (!process.HasExited)
        {
            using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])!)
                await kill.WaitForExitAsync();
            using var wait = new CancellationTokenSource(timeout);
            try
            {
                await process.WaitForExitAsync(wait.Token);
            }
            catch (OperationCanceledException)
            {
                Kill();
                throw new TimeoutException($"{Name} did not stop within {timeout.TotalSeconds:0} s of SIGTERM:\n{Output}");
            }
        }
        process.WaitForExit();
        return process.ExitCode;
    }

    public ValueTask DisposeAsync()
    {
        try
        {
            if (!process.HasExited)
                process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }
        process.Dispose();
        return ValueTask.CompletedTask;
    }
}
