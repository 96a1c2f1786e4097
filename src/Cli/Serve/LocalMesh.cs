using System.Globalization;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Hosting;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Cli.Serve;

/// <summary>
/// In-process model services and a gateway on loopback, configured only by what is passed here
/// (no appsettings files): used by <c>up</c> and <c>demo</c> (the benchmarks, bench/InterpMesh.Bench, have their own).
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
    /// A gateway in front of the given models (name → model-service address) with the plugins in
    /// <paramref name="pluginsPath"/>; auth only when a key is given (it gets the admin role);
    /// no rate limits.
    /// </summary>
    public static WebApplication StartGateway(IReadOnlyDictionary<string, string> models, string pluginsPath, string dataDir,
        string url = "http://127.0.0.1:0", string? key = null, string logLevel = "Error", Dictionary<string, string?>? extra = null)
    {
        var settings = LocalHosts.GatewaySettings(models, pluginsPath, dataDir, key);
        settings["Kestrel:Endpoints:Grpc:Url"] = url;
        settings["Logging:LogLevel:Default"] = logLevel;
        return LocalHosts.StartGatewayAsync(settings.Concat(extra ?? [])).GetAwaiter().GetResult();
    }

    public static void Stop(params WebApplication[] apps) => LocalHosts.StopAsync(apps).GetAwaiter().GetResult();
}
