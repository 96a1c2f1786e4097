using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Tests;

/// <summary>Gateway:HotReload: a plugin's DLL replaced on disk is reloaded without a restart.</summary>
[Collection("gateways")]
public sealed class HotReloadTests
{
    [Fact]
    public async Task A_plugin_dll_replaced_on_disk_is_reloaded_and_the_next_run_uses_the_new_build()
    {
        var (_, v1, v2) = await PluginBuilds.OutputsAsync();
        string root = Path.Combine(Path.GetTempPath(), "interpmesh-hot-" + Guid.NewGuid().ToString("N"));
        string folder = Path.Combine(root, "versioned");
        TestPlugins.Copy(v1, folder);
        File.WriteAllText(Path.Combine(folder, "plugin.json"), """{ "id": "versioned", "assembly": "Misbehaving.dll", "type": "Misbehaving.Versioned" }""");
        var (gateway, address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], root, Path.Combine(root, "..", Path.GetFileName(root) + "-data"),
            new() { ["Worker:HotReload"] = "true" });
        try
        {
            using var channel = Mesh.Channel(address);
            var analyses = new AnalysisService.AnalysisServiceClient(channel);
            async Task<string> Version() => (await analyses.DescribePluginAsync(new DescribePluginRequest { Id = "versioned" }, Mesh.As(Mesh.ReaderKey))).Version;
            async Task<string> RunVersion()
            {
                using var call = analyses.RunAnalysis(new AnalysisRequest { Plugin = "versioned" }, Mesh.As(Mesh.AliceKey));
                Job? final = null;
                await foreach (var e in call.ResponseStream.ReadAllAsync())
                    final = e.Finished ?? final;
                Assert.True(final!.State == JobState.Succeeded, final.Error);
                return System.Text.Json.Nodes.JsonNode.Parse(final.Result.SummaryJson)!["version"]!.GetValue<string>();
            }
            Assert.Equal("1.0.0", await Version());
            Assert.Equal("1.0.0", await RunVersion());

            // A new build lands in the folder (as a plugin rollout copies it).
            File.Copy(Path.Combine(v2, "Misbehaving.dll"), Path.Combine(folder, "Misbehaving.dll"), overwrite: true);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (await Version() != "2.0.0" && clock.Elapsed < TimeSpan.FromSeconds(30))
                await Task.Delay(100);
            Assert.Equal("2.0.0", await Version());
            Assert.Equal("2.0.0", await RunVersion());
        }
        finally
        {
            await gateway.StopAsync();
            await gateway.DisposeAsync();
        }
    }
}
