using System.Security.Cryptography;
using System.Text;
using InterpMesh.Hosting;

namespace InterpMesh.Cli.Tests;

/// <summary>The settings of the gateway and the analysis worker that `interpmesh up` and `interpmesh-bench` start in process (LocalHosts.GatewaySettings, WorkerSettings).</summary>
public sealed class LocalGatewaySettingsTests
{
    [Fact]
    public void Without_a_key_auth_is_off_and_the_first_model_is_the_default()
    {
        var models = new Dictionary<string, string> { ["a"] = "http://127.0.0.1:1", ["b"] = "http://127.0.0.1:2" };
        var s = LocalHosts.GatewaySettings(models, "/d");
        var w = LocalHosts.WorkerSettings(models, "/p", "/d");
        Assert.Equal("false", s["Gateway:Auth:Enabled"]);
        Assert.Equal("0", s["Gateway:RateLimit:RequestsPerSecond"]);
        Assert.Equal("a", s["Gateway:DefaultModel"]);
        Assert.Equal("http://127.0.0.1:2", s["Gateway:Models:b:Endpoints:0"]);
        // The plugins are the worker's; the job store and artifacts are one data folder for both.
        Assert.Equal("/p", w["Worker:PluginsPath"]);
        Assert.DoesNotContain(s.Keys, k => k.Contains("PluginsPath", StringComparison.Ordinal));
        Assert.Equal(Path.Combine("/d", "jobs"), s["Gateway:JobsPath"]);
        Assert.Equal(Path.Combine("/d", "artifacts"), s["Gateway:ArtifactsPath"]);
        Assert.Equal(Path.Combine("/d", "jobs"), w["Worker:JobsPath"]);
        Assert.Equal(Path.Combine("/d", "artifacts"), w["Worker:ArtifactsPath"]);
        Assert.Equal(("a", "http://127.0.0.1:2"), (w["Worker:DefaultModel"], w["Worker:Models:b:Endpoints:0"]));
        // In one process, a stuck plugin must not stop everything else in it.
        Assert.Equal("false", w["Worker:RecycleStuckPlugins"]);
        Assert.DoesNotContain(s.Keys, k => k.StartsWith("Gateway:Auth:Keys", StringComparison.Ordinal));
    }

    [Fact]
    public void With_a_key_auth_is_on_and_the_key_is_an_admin_stored_as_its_sha256()
    {
        var s = LocalHosts.GatewaySettings(new Dictionary<string, string>(), "/d", key: "secret");
        Assert.Equal("true", s["Gateway:Auth:Enabled"]);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes("secret"))), s["Gateway:Auth:Keys:0:Sha256"]);
        Assert.Equal("admin", s["Gateway:Auth:Keys:0:Roles:0"]);
        Assert.False(s.ContainsKey("Gateway:DefaultModel"));
        Assert.DoesNotContain("secret", s.Values);
    }
}
