using System.Text;
using System.Text.Json.Nodes;
using InterpMesh.Artifacts;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// The artifact store shared by several processes: publish by one rename with no lock, readers that
/// keep their version, no start-up wipe of others' staging, and the size limit while writing.
/// Two store instances on one folder stand for two processes (nothing in the store is shared in
/// memory between instances).
/// </summary>
public sealed class ArtifactStoreTests : IDisposable
{
    private readonly string root = TempFolders.Create("interpmesh-store-");

    public void Dispose() => TempFolders.Delete(root);

    private static Dictionary<string, byte[]> File(string name, string text) => new() { [name] = Encoding.UTF8.GetBytes(text) };

    [Fact]
    public async Task Two_writers_replacing_one_name_at_once_both_succeed_and_readers_always_see_a_whole_version()
    {
        var a = new ArtifactStore(root);
        var b = new ArtifactStore(root);
        await a.SaveFilesAsync("shared/x", new Dictionary<string, byte[]> { ["one.txt"] = "v0"u8.ToArray(), ["two.txt"] = "v0"u8.ToArray() });
        using var stop = new CancellationTokenSource();
        int reads = 0;
        var reader = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                // Both files of a version carry the same text: a torn read would show two.
                var files = await b.LoadFilesAsync("shared/x");
                Assert.Equal(Encoding.UTF8.GetString(files["one.txt"]), Encoding.UTF8.GetString(files["two.txt"]));
                reads++;
            }
        });
        async Task Write(ArtifactStore store, string who)
        {
            for (int i = 0; i < 25; i++)
                await store.SaveFilesAsync("shared/x", new Dictionary<string, byte[]> { ["one.txt"] = Encoding.UTF8.GetBytes($"{who}{i}"), ["two.txt"] = Encoding.UTF8.GetBytes($"{who}{i}") });
        }
        await Task.WhenAll(Task.Run(() => Write(a, "a")), Task.Run(() => Write(b, "b")));
        stop.Cancel();
        await reader;
        Assert.True(reads > 0, "the reader never read");
        var last = Encoding.UTF8.GetString((await a.LoadFilesAsync("shared/x"))["one.txt"]);
        Assert.True(last is "a24" or "b24", $"the artifact is '{last}', not the last write of either writer");
        Assert.Equal(["shared/x"], a.List().Select(x => x.Name));
        Assert.Equal(["shared/x"], b.List().Select(x => x.Name));
    }

    [Fact]
    public async Task A_reader_keeps_the_version_it_opened_when_the_artifact_is_replaced_or_deleted()
    {
        var store = new ArtifactStore(root);
        await store.SaveFilesAsync("m", File("w.bin", "old"));
        var opened = store.Open("m")!;
        await store.SaveFilesAsync("m", File("w.bin", "new"));
        Assert.Equal("old", System.IO.File.ReadAllText(opened.PathOf("w.bin")));
        Assert.Equal("new", Encoding.UTF8.GetString((await store.LoadFilesAsync("m"))["w.bin"]));
        Assert.True(store.Delete("m"));
        Assert.Null(await store.FindAsync("m"));
        Assert.Empty(store.List());
        Assert.Equal("old", System.IO.File.ReadAllText(opened.PathOf("w.bin")));
        Assert.False(store.Delete("m"));
    }

    [Fact]
    public async Task Starting_a_store_leaves_live_writers_staging_alone_and_clears_only_what_is_stale()
    {
        var first = new ArtifactStore(root);
        using var inFlight = first.Begin("upload", new JsonObject { ["k"] = 1 });
        await using (var f = inFlight.CreateFile("part.bin"))
            await f.WriteAsync(new byte[1000]);

        string staging = Path.Combine(root, ".staging");
        string host = Environment.MachineName;
        // A process of this host that has exited (a pid that cannot be running) left a write behind.
        string dead = Directory.CreateDirectory(Path.Combine(staging, $"{host}-{int.MaxValue}", "w")).Parent!.FullName;
        // Another host's recent upload, and another host's upload idle for two days.
        string otherRecent = Directory.CreateDirectory(Path.Combine(staging, "other-pod-1", "w")).Parent!.FullName;
        string otherStale = Directory.CreateDirectory(Path.Combine(staging, "gone-pod-1", "w")).Parent!.FullName;
        var old = DateTime.UtcNow - TimeSpan.FromDays(2);
        Directory.SetLastWriteTimeUtc(Path.Combine(otherStale, "w"), old);
        Directory.SetLastWriteTimeUtc(otherStale, old);

        _ = new ArtifactStore(root);

        Assert.True(Directory.Exists(inFlight.StagingDirectory), "a starting store removed a live writer's upload");
        Assert.False(Directory.Exists(dead), "a dead process's staging on this host was kept");
        Assert.True(Directory.Exists(otherRecent), "another host's recent upload was removed");
        Assert.False(Directory.Exists(otherStale), "another host's upload idle for two days was kept");
        var stored = await inFlight.CommitAsync();
        Assert.Equal(1000, stored.Files.Single().Bytes);
    }

    [Fact]
    public async Task An_artifact_over_the_size_limit_is_refused_while_written_and_nothing_is_stored()
    {
        var store = new ArtifactStore(root, maxArtifactBytes: 100);
        await store.SaveFilesAsync("fits", new Dictionary<string, byte[]> { ["a"] = new byte[60], ["b"] = new byte[40] });
        var e = await Assert.ThrowsAsync<ArtifactTooLargeException>(() => store.SaveFilesAsync("big", new Dictionary<string, byte[]> { ["a"] = new byte[60], ["b"] = new byte[41] }));
        Assert.Contains("'big'", e.Message, StringComparison.Ordinal);
        Assert.Contains("Gateway:Limits:MaxArtifactBytes", e.Message, StringComparison.Ordinal);
        Assert.Null(await store.FindAsync("big"));
        Assert.Equal(["fits"], store.List().Select(a => a.Name));
        // The refused write's staging is gone too.
        Assert.DoesNotContain(Directory.EnumerateDirectories(Path.Combine(root, ".staging"), "*", SearchOption.AllDirectories), d => Directory.EnumerateFiles(d).Any());
    }

    [Fact]
    public async Task An_artifact_folder_of_the_earlier_layout_is_read_listed_and_replaced()
    {
        // The layout before versions: <name>.artifact/ with the files and the manifest in it.
        var legacy = Directory.CreateDirectory(Path.Combine(root, "team", "old.artifact")).FullName;
        await System.IO.File.WriteAllTextAsync(Path.Combine(legacy, "f.txt"), "legacy");
        string sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData("legacy"u8.ToArray()));
        await System.IO.File.WriteAllTextAsync(Path.Combine(legacy, ".artifact.json"),
            $$$"""{"name":"team/old","created":"2026-01-01T00:00:00.0000000+00:00","files":[{"name":"f.txt","bytes":6,"sha256":"{{{sha}}}"}],"metadata":{}}""");
        var store = new ArtifactStore(root);
        Assert.Equal(["team/old"], store.List().Select(a => a.Name));
        Assert.Equal("legacy", Encoding.UTF8.GetString((await store.LoadFilesAsync("team/old"))["f.txt"]));
        await store.SaveFilesAsync("team/old", File("f.txt", "current"));
        Assert.Equal("current", Encoding.UTF8.GetString((await store.LoadFilesAsync("team/old"))["f.txt"]));
        Assert.Equal(["team/old"], store.List().Select(a => a.Name));
        Assert.NotNull(new DirectoryInfo(Path.Combine(root, "team", "old.artifact")).LinkTarget);
    }
}

/// <summary>The artifact size limit at the API edge: a real gateway with a small Gateway:Limits:MaxArtifactBytes.</summary>
[Collection("gateways")]
public sealed class ArtifactSizeLimitTests
{
    [Fact]
    public async Task An_upload_whose_header_declares_more_than_the_limit_is_refused_before_any_byte_and_the_gateway_keeps_serving()
    {
        string plugins = TempFolders.Create("interpmesh-gw-noplugins-");
        string data = TempFolders.Create("interpmesh-gw-limit-");
        var (gateway, address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data,
            new Dictionary<string, string?> { ["Gateway:Limits:MaxArtifactBytes"] = "1000" });
        try
        {
            using var channel = Mesh.Channel(address);
            var artifacts = new Contracts.V1.ArtifactService.ArtifactServiceClient(channel);
            async Task<Contracts.V1.ArtifactInfo> Put(string name, params int[] sizes)
            {
                using var call = artifacts.PutArtifact(Mesh.As(Mesh.AliceKey));
                var header = new Contracts.V1.ArtifactInfo { Name = name };
                header.Files.AddRange(sizes.Select((n, i) => new Contracts.V1.ArtifactFileInfo { Name = $"f{i}.bin", Bytes = n }));
                try
                {
                    await call.RequestStream.WriteAsync(new Contracts.V1.ArtifactChunk { Header = header });
                    for (int i = 0; i < sizes.Length; i++)
                        await call.RequestStream.WriteAsync(new Contracts.V1.ArtifactChunk { Data = new Contracts.V1.FileData { File = $"f{i}.bin", Data = Google.Protobuf.ByteString.CopyFrom(new byte[sizes[i]]) } });
                    await call.RequestStream.CompleteAsync();
                }
                catch (Exception e) when (e is Grpc.Core.RpcException or InvalidOperationException)
                {
                    // Refused before the stream was all sent: the response says why.
                }
                return await call.ResponseAsync;
            }

            var refused = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => Put("too-big", 600, 401));
            Assert.Equal(Grpc.Core.StatusCode.ResourceExhausted, refused.StatusCode);
            Assert.Equal("artifact 'too-big' is larger than the limit of 1000 bytes (Gateway:Limits:MaxArtifactBytes); nothing was stored", refused.Status.Detail);
            Assert.Equal("-1", refused.Trailers.GetValue(Contracts.RetryPushback.Trailer));
            var stored = await Put("fits", 600, 400);
            Assert.Equal(1000, stored.Files.Sum(f => f.Bytes));
            var listed = await artifacts.ListArtifactsAsync(new Contracts.V1.ListArtifactsRequest(), Mesh.As(Mesh.ReaderKey));
            Assert.Equal(["fits"], listed.Artifacts.Select(a => a.Name));
        }
        finally
        {
            await Mesh.StopAsync(gateway);
            TempFolders.Delete(plugins, data);
        }
    }

    [Fact]
    public void A_size_limit_below_one_byte_stops_the_start()
    {
        var options = new Configuration.GatewayOptions { Auth = { Enabled = false } };
        options.Models["tiny"] = new InterpMesh.Routing.ModelRoute { Endpoints = ["http://127.0.0.1:1"] };
        options.Limits.MaxArtifactBytes = 0;
        var result = new Configuration.GatewayOptionsValidator().Validate(null, options);
        Assert.Equal(["Gateway:Limits:MaxArtifactBytes must be at least 1, got 0"], result.Failures);
    }
}
