using System.Diagnostics;
using System.Text.RegularExpressions;
using Npgsql;

namespace InterpMesh.Tests;

/// <summary>
/// A throwaway PostgreSQL cluster of Debian's <c>postgresql</c> server: initdb into a temporary
/// folder, started on a free loopback port with its socket in that folder, stopped and removed by
/// <see cref="Stop"/>. PostgreSQL refuses to run as root, so a root process (CI) runs initdb and
/// pg_ctl as the dedicated user <see cref="ServiceUser"/> through <c>runuser</c> (.ci/run creates
/// it). The folder is stamped with this process's id; a later start stops and removes clusters
/// whose process died. No test framework here: the tests' <c>PostgresCluster</c> fixture wraps it,
/// and interpmesh-bench links this file for its <c>jobs</c> benchmark (one implementation for both).
/// </summary>
internal sealed partial class PostgresServer : IDisposable
{
    public const string ServiceUser = "interpmesh-pg";
    private const string FolderPrefix = "interpmesh-pgcluster.";

    private readonly string who;
    private string? folder;
    private string? bin;
    private int port;

    /// <param name="who">What needs the server, for the message when it is not installed (e.g. "The PostgreSQL job-store tests need").</param>
    public PostgresServer(string who) => this.who = who;

    [GeneratedRegex(@"^interpmesh-pgcluster\.p(\d+)-[0-9a-f]{32}$")]
    private static partial Regex Owned();

    private static bool AsRoot => Environment.IsPrivilegedProcess;

    /// <summary>Creates and starts the cluster and waits until it takes connections.</summary>
    public async Task StartAsync()
    {
        bin = FindBin(who: who);
        if (AsRoot && Run("id", ["-u", ServiceUser], throwOnError: false).ExitCode != 0)
            throw new InvalidOperationException(
                $"PostgreSQL refuses to run as root and the user '{ServiceUser}' does not exist; create it (`useradd --system --no-create-home --shell /usr/sbin/nologin {ServiceUser}`, as .ci/run does)");
        SweepOrphans(bin);
        folder = Path.Combine(Path.GetTempPath(), $"{FolderPrefix}p{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(folder);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Stop();
        if (AsRoot)
            Run("chown", [ServiceUser, folder]);
        string data = Path.Combine(folder, "data");
        AsService(Path.Combine(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        // A free port may be taken between the probe and the server's bind: try a few.
        for (int attempt = 1; ; attempt++)
        {
            port = FreePort();
            var start = AsService(Path.Combine(bin, "pg_ctl"),
                ["-D", data, "-l", Path.Combine(folder, "server.log"), "-w", "-t", "60",
                 "-o", $"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                 "start"], throwOnError: attempt == 3);
            if (start.ExitCode == 0)
                break;
        }
        await using var connection = new NpgsqlConnection(ConnectionString("postgres"));
        await connection.OpenAsync();
    }

    /// <summary>The connection string of <paramref name="database"/> in this cluster (user postgres, trust auth, pools of 40).</summary>
    public string ConnectionString(string database) =>
        $"Host=127.0.0.1;Port={port};Username=postgres;Database={database};Timeout=15;Command Timeout=60;Maximum Pool Size=40";

    /// <summary>A new empty database in the cluster; returns its connection string.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        string name = "jobs_" + Guid.NewGuid().ToString("N")[..12];
        await using var connection = new NpgsqlConnection(ConnectionString("postgres"));
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand($"CREATE DATABASE {name}", connection);
        await command.ExecuteNonQueryAsync();
        return ConnectionString(name);
    }

    /// <summary>The server's main process (the postmaster, whose children are the connections' backends) while it runs; null otherwise.</summary>
    public int? ProcessId
    {
        get
        {
            string? pidFile = folder is null ? null : Path.Combine(folder, "data", "postmaster.pid");
            return pidFile is not null && File.Exists(pidFile) && int.TryParse(File.ReadLines(pidFile).FirstOrDefault(), out int pid) ? pid : null;
        }
    }

    /// <summary>Stops the cluster and removes its folder (idempotent).</summary>
    public void Stop()
    {
        if (folder is null || bin is null)
            return;
        string stopping = folder;
        folder = null;
        StopCluster(bin, stopping);
    }

    public void Dispose() => Stop();

    /// <summary>The newest installed server's bin folder (<paramref name="root"/>/VERSION/bin); if none, an error saying what to install.</summary>
    public static string FindBin(string root = "/usr/lib/postgresql", string who = "The PostgreSQL job-store tests need")
    {
        var found = Directory.Exists(root)
            ? Directory.EnumerateDirectories(root)
                .Select(d => (Dir: Path.Combine(d, "bin"), Version: int.TryParse(Path.GetFileName(d), out int v) ? v : -1))
                .Where(d => d.Version > 0 && File.Exists(Path.Combine(d.Dir, "initdb")) && File.Exists(Path.Combine(d.Dir, "pg_ctl")))
                .OrderByDescending(d => d.Version).FirstOrDefault().Dir
            : null;
        return found ?? throw new InvalidOperationException(
            $"PostgreSQL's server is not installed: no {root}/VERSION/bin/initdb. {who} Debian's postgresql package (`apt-get install postgresql`; .ci/run installs it)");
    }

    private static void StopCluster(string bin, string clusterFolder)
    {
        string data = Path.Combine(clusterFolder, "data");
        if (File.Exists(Path.Combine(data, "postmaster.pid")))
            AsService(Path.Combine(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "-t", "30", "stop"], throwOnError: false);
        try
        {
            Directory.Delete(clusterFolder, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Stops and removes clusters left by processes that have exited.</summary>
    private static void SweepOrphans(string bin)
    {
        foreach (var dir in Directory.EnumerateDirectories(Path.GetTempPath(), FolderPrefix + "*"))
        {
            var match = Owned().Match(Path.GetFileName(dir));
            if (match.Success && int.TryParse(match.Groups[1].Value, out int pid) && pid != Environment.ProcessId && !Alive(pid))
                StopCluster(bin, dir);
        }
    }

    private static bool Alive(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    /// <summary>A loopback port that was free a moment ago (the OS picks it).</summary>
    private static int FreePort()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int free = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return free;
    }

    private static (int ExitCode, string Output) AsService(string file, string[] args, bool throwOnError = true) =>
        AsRoot ? Run("runuser", ["-u", ServiceUser, "--", file, .. args], throwOnError) : Run(file, args, throwOnError);

    private static (int ExitCode, string Output) Run(string file, string[] args, bool throwOnError = true)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = Path.GetTempPath() };
        foreach (var a in args)
            info.ArgumentList.Add(a);
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish in 120 s");
        }
        string output = stdout.Result + stderr.Result;
        if (throwOnError && process.ExitCode != 0)
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} exited with {process.ExitCode}: {output}");
        return (process.ExitCode, output);
    }
}
