using System.Globalization;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Hosting;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Cli.Serve;

/// <summary>
/// In-process model services, a gateway and an analysis worker on loopback, configured only by what
/// is passed here (no appsettings files): used by <c>up</c> and <c>demo</c> (the benchmarks,
/// bench/InterpMesh.Bench, have their own). The gateway and the worker share the data folder: its
/// embedded job store (<c>jobs/jobs.db</c>) and its artifacts.
/// </summary>
internal static class LocalMesh
{
    /// <summary>The checkout this binary was built from (it holds models/, bench/ and the built plugins/).</summary>
    public static string Repository()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "InterpMesh.sln")))
                return d.FullName;
        }
        throw new UsageException("this command runs from a checkout (it needs models/, bench/ and the built plugins/)");
    }

    /// <summary>The checkout, or null when this binary runs outside one.</summary>
    public static string? RepositoryOrNull()
    {
        try
        {
            return Repository();
        }
        catch (UsageException)
        {
            return null;
        }
    }

    /// <summary>Starts a model service and waits until its model is loaded (a load failure stops it and says why).</summary>
    public static WebApplication StartModelService(string modelPath, int threads, string url = "http://127.0.0.1:0", Dictionary<string, string?>? extra = null) =>
        LocalHosts.StartModelServiceAsync(new Dictionary<string, string?>
        {
            ["ModelService:ModelPath"] = modelPath,
            ["ModelService:Threads"] = threads.ToString(CultureInfo.InvariantCulture),
            ["Kestrel:Endpoints:Grpc:Url"] = url,
        }.Concat(extra ?? [])).GetAwaiter().GetResult();

    /// <summary>
    /// A gateway in front of the given models (name → model-service address) and an analysis worker
    /// running the plugins in <paramref name="pluginsPath"/> against them, both on the data folder;
    /// auth only when a key is given (it gets the admin role); no rate limits. The worker starts
    /// first, so the gateway lists its plugins from its first call.
    /// </summary>
    public static (WebApplication Gateway, WebApplication Worker) StartGateway(IReadOnlyDictionary<string, string> models, string pluginsPath, string dataDir,
        string url = "http://127.0.0.1:0", string? key = null, string logLevel = "Error", Dictionary<string, string?>? extra = null)
    {
        var workerSettings = LocalHosts.WorkerSettings(models, pluginsPath, dataDir);
        workerSettings["Logging:LogLevel:Default"] = logLevel;
        var worker = LocalHosts.StartWorkerAsync(workerSettings).GetAwaiter().GetResult();
        try
        {
            var settings = LocalHosts.GatewaySettings(models, dataDir, key);
            settings["Kestrel:Endpoints:Grpc:Url"] = url;
            settings["Logging:LogLevel:Default"] = logLevel;
            return (LocalHosts.StartGatewayAsync(settings.Concat(extra ?? [])).GetAwaiter().GetResult(), worker);
        }
        catch
        {
            Stop(worker);
            throw;
        }
    }

    /// <summary>A port free on <paramref name="bind"/> now (the OS picks it).</summary>
    public static int FreePort(string bind)
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.TryParse(bind, out var ip) ? ip : System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    public static void Stop(params WebApplication[] apps) => LocalHosts.StopAsync(apps).GetAwaiter().GetResult();
}
