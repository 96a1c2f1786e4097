using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Cli.Tests;

/// <summary>Issue #20: `interpmesh artifacts list` shows every artifact when the gateway serves them in pages.</summary>
public sealed class ArtifactListPagingTests
{
    [Fact]
    public async Task Artifacts_list_follows_the_gateways_pages_to_the_last()
    {
        string root = Path.Combine(Path.GetTempPath(), "interpmesh-cli-pages-" + Guid.NewGuid().ToString("N"));
        string files = Path.Combine(root, "files");
        Directory.CreateDirectory(files);
        File.WriteAllText(Path.Combine(files, "note.txt"), "hello");
        WebApplication? gateway = null;
        try
        {
            // Pages of two: seven artifacts take four.
            (gateway, var address) = await Mesh.StartGatewayAsync([$"http://127.0.0.1:{Ports.Free()}"], Path.Combine(root, "plugins"), root, new()
            {
                ["Gateway:Limits:DefaultPageSize"] = "2",
                ["Gateway:Limits:MaxPageSize"] = "2",
            });
            var names = new[] { "g", "c", "e", "a", "f", "b", "d" }.Select(n => $"paged/{n}").ToList();
            foreach (var name in names)
            {
                var put = CliRunner.Run("artifacts", "put", name, "--from", files, "--server", address, "--key", Mesh.AliceKey);
                Assert.True(put.ExitCode == 0, put.Stderr);
            }
            var json = CliRunner.Run("artifacts", "list", "--prefix", "paged/", "--json", "--server", address, "--key", Mesh.ReaderKey);
            Assert.True(json.ExitCode == 0, json.Stderr);
            Assert.Equal(names.Order(StringComparer.Ordinal), json.Json.GetProperty("artifacts").EnumerateArray().Select(a => a.GetProperty("name").GetString()));
            var text = CliRunner.Run("artifacts", "list", "--prefix", "paged/", "--server", address, "--key", Mesh.ReaderKey);
            Assert.True(text.ExitCode == 0, text.Stderr);
            Assert.All(names, n => Assert.Contains(n, text.Stdout, StringComparison.Ordinal));
        }
        finally
        {
            await Mesh.StopAsync(gateway);
            Directory.Delete(root, recursive: true);
        }
    }
}
