using System.Security.Cryptography;
using System.Text;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Security;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// docs/deploy.md rotates API keys by updating the Secret. The kubelet updates a Secret volume by
/// writing the new files into a fresh hidden folder and swapping the <c>..data</c> symlink that
/// <c>keys.json</c> points through; the gateway's key store must see that without a restart.
/// </summary>
public sealed class KeyRotationTests
{
    [Fact]
    public async Task A_rotated_secret_volume_reaches_the_gateway_without_a_restart()
    {
        var dir = Directory.CreateTempSubdirectory("interpmesh-keys-");
        try
        {
            WriteAsKubelet(dir.FullName, "..2025_01_01_00_00_00.1", Entry("alice", "old-key"));
            File.CreateSymbolicLink(Path.Combine(dir.FullName, "keys.json"), "..data/keys.json");
            var options = Options.Create(new GatewayOptions { Auth = { KeysFile = Path.Combine(dir.FullName, "keys.json") } });
            var keys = new ApiKeys(options, NullLogger<ApiKeys>.Instance);
            Assert.Equal("alice", keys.Authenticate("old-key")?.Name);

            WriteAsKubelet(dir.FullName, "..2025_01_02_00_00_00.2", Entry("bob", "new-key"));
            // The store re-checks the file at most every 5 s.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
            while (keys.Authenticate("new-key") is null && DateTime.UtcNow < deadline)
                await Task.Delay(500);
            Assert.Equal("bob", keys.Authenticate("new-key")?.Name);
            Assert.Null(keys.Authenticate("old-key"));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static string Entry(string name, string key) =>
        $$"""[{"name": "{{name}}", "sha256": "{{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)))}}", "roles": ["read"]}]""";

    /// <summary>The kubelet's atomic update: new timestamped folder, new <c>..data</c> link renamed over the old one.</summary>
    private static void WriteAsKubelet(string dir, string version, string keysJson)
    {
        Directory.CreateDirectory(Path.Combine(dir, version));
        File.WriteAllText(Path.Combine(dir, version, "keys.json"), keysJson);
        string next = Path.Combine(dir, "..data_tmp");
        File.CreateSymbolicLink(next, version);
        string? old = Directory.Exists(Path.Combine(dir, "..data")) ? new FileInfo(Path.Combine(dir, "..data")).LinkTarget : null;
        // rename(2) over the old link, as the kubelet does (File.Move refuses a link to a folder).
        using (var mv = System.Diagnostics.Process.Start("mv", ["-T", next, Path.Combine(dir, "..data")]))
        {
            mv.WaitForExit();
            Assert.Equal(0, mv.ExitCode);
        }
        if (old is not null && old != version)
            Directory.Delete(Path.Combine(dir, old), recursive: true);
    }
}
