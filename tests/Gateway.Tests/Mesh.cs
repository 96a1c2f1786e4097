using System.Text;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Gateway.Tests;

/// <summary>Plugin folders for the gateway tests: the sample, the misbehaving plugins and broken folders.</summary>
public static class TestPlugins
{
    /// <summary>A plugins folder with the sample, the misbehaving plugins and broken folders.</summary>
    public static async Task<string> PluginsFolderAsync()
    {
        var (tokenStats, misbehaving, _) = await PluginBuilds.OutputsAsync();
        string root = TempFolders.Create("interpmesh-plugin-root-");
        Copy(tokenStats, Path.Combine(root, "token-stats"));
        foreach (var (id, type) in new[] { ("slow", "Slow"), ("throws", "Throws"), ("hangs", "Hangs"), ("future-sdk", "FutureSdk"), ("throws-on-load", "ThrowsOnLoad"), ("chatty", "Chatty"), ("hoards", "Hoards"), ("bulky", "Bulky") })
        {
            var dir = Path.Combine(root, id);
            Copy(misbehaving, dir);
            File.WriteAllText(Path.Combine(dir, "plugin.json"), $$"""{ "id": "{{id}}", "assembly": "Misbehaving.dll", "type": "Misbehaving.{{type}}" }""");
        }
        var broken = Path.Combine(root, "broken-dll");
        Directory.CreateDirectory(broken);
        File.WriteAllText(Path.Combine(broken, "plugin.json"), """{ "id": "broken-dll", "assembly": "Broken.dll" }""");
        File.WriteAllBytes(Path.Combine(broken, "Broken.dll"), Encoding.ASCII.GetBytes("MZ this is not a real assembly"));
        Directory.CreateDirectory(Path.Combine(root, "no-manifest"));
        return root;
    }

    public static void Copy(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(to, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
    }

}

/// <summary>One model service, one gateway in front of it and one analysis worker running the test plugins against it, shared by a test class.</summary>
public sealed class MeshFixture : IAsyncLifetime
{
    private WebApplication? service;
    private WebApplication? gateway;

    public string ServiceAddress { get; private set; } = "";
    public string GatewayAddress { get; private set; } = "";
    public string PluginsPath { get; private set; } = "";
    public string DataPath { get; } = TempFolders.Create("interpmesh-gw-data-");
    public int MetricsPort { get; } = Ports.Free();
    public GrpcChannel Channel { get; private set; } = null!;
    public IServiceProvider GatewayServices => gateway!.Services;

    /// <summary>The analysis worker beside the gateway (it loads the plugins and runs the jobs).</summary>
    public IServiceProvider WorkerServices => Mesh.WorkerOf(gateway!).Services;

    public async Task InitializeAsync()
    {
        PluginsPath = await TestPlugins.PluginsFolderAsync();
        (service, ServiceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        (gateway, GatewayAddress) = await Mesh.StartGatewayAsync([ServiceAddress], PluginsPath, DataPath, metricsPort: MetricsPort);
        Channel = Mesh.Channel(GatewayAddress);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Mesh.StopAsync(gateway, service);
        TempFolders.Delete(PluginsPath, DataPath);
    }
}
