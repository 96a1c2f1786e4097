using System.Text.Json;
using Grpc.Core;
using InterpMesh.Client;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// The .NET client library (src/Client) against a real gateway and model service on loopback:
/// captures assembled from their chunks equal the model service's own answer, jobs are followed
/// with their progress, artifacts make the round trip, and its dependency graph holds no server
/// project and no libtorch.
/// </summary>
[Collection("gateways")]
public sealed class ClientLibraryTests(MeshFixture mesh) : IClassFixture<MeshFixture>
{
    private MeshClient Alice() => MeshClient.Connect(mesh.GatewayAddress, Mesh.AliceKey, "tiny");

    [Fact]
    public async Task Captures_through_the_gateway_equal_the_model_services_own()
    {
        using var client = Alice();
        using var direct = MeshClient.Connect(mesh.ServiceAddress);
        var request = new RunRequest
        {
            Inputs = { new Input { Text = "Once upon a time there was a dog" } },
            Captures = { new Capture { Hooks = { "blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern" } } },
        };
        var viaGateway = await Collect(client.RunAsync(request));
        var viaService = await Collect(direct.RunAsync(request));
        Assert.Equal(6, viaGateway.Count);
        Assert.Equal(viaService.Keys.Order(), viaGateway.Keys.Order());
        foreach (var (hook, tensor) in viaService)
        {
            Assert.Equal(tensor.Shape, viaGateway[hook].Shape);
            Assert.Equal(tensor.ToFloat32(), viaGateway[hook].ToFloat32());
        }
    }

    [Fact]
    public async Task Gradient_requests_through_the_gateway_return_gradient_chunks_and_the_metric()
    {
        using var client = Alice();
        using var direct = MeshClient.Connect(mesh.ServiceAddress);
        var request = new RunRequest
        {
            Inputs = { new Input { Text = "Once upon a time there was a dog" } },
            // A capture and a gradient of the same hook: they must arrive apart.
            Captures = { new Capture { Hooks = { "blocks.0.hook_resid_post" } } },
            Gradient = new GradientRequest { Loss = true, Hooks = { "blocks.0.hook_resid_post", "blocks.1.attn.hook_z" } },
        };
        async Task<(List<RunItem> Items, RunResult Result)> Items(MeshClient c)
        {
            var items = new List<RunItem>();
            RunResult? result = null;
            await foreach (var item in c.RunAsync(request))
            {
                if (item.Result is not null)
                    result = item.Result;
                else
                    items.Add(item);
            }
            return (items, result!);
        }
        var (viaGateway, gatewayResult) = await Items(client);
        var (viaService, serviceResult) = await Items(direct);

        Assert.Equal([("blocks.0.hook_resid_post", false), ("blocks.0.hook_resid_post", true), ("blocks.1.attn.hook_z", true)],
            viaGateway.Select(i => (i.Hook!, i.Gradient)).Order().ToList());
        Assert.Equal(viaService.Select(i => (i.Hook, i.Gradient)), viaGateway.Select(i => (i.Hook, i.Gradient)));
        for (int i = 0; i < viaService.Count; i++)
        {
            Assert.Equal(viaService[i].Activation!.Shape, viaGateway[i].Activation!.Shape);
            Assert.Equal(viaService[i].Activation!.ToFloat32(), viaGateway[i].Activation!.ToFloat32());
        }
        var gradient = viaGateway.Single(i => i.Gradient && i.Hook == "blocks.0.hook_resid_post").Activation!.ToFloat32();
        var capture = viaGateway.Single(i => !i.Gradient).Activation!.ToFloat32();
        Assert.NotEqual(capture, gradient);
        Assert.Contains(gradient, x => x != 0);
        Assert.NotNull(gatewayResult.Metric);
        Assert.True(gatewayResult.Metric > 0);
        Assert.Equal(serviceResult.Metric, gatewayResult.Metric);
        Assert.Equal(serviceResult.RowMetrics, gatewayResult.RowMetrics);
    }

    private static async Task<Dictionary<string, WireTensor>> Collect(IAsyncEnumerable<RunItem> items)
    {
        var captures = new Dictionary<string, WireTensor>();
        bool result = false;
        await foreach (var item in items)
        {
            if (item.Result is not null)
                result = true;
            else
                captures.Add(item.Hook!, item.Activation!);
        }
        Assert.True(result, "the run ended without its result");
        return captures;
    }

    [Fact]
    public async Task A_job_is_followed_to_its_result_with_progress()
    {
        using var client = Alice();
        var progress = new List<double>();
        var job = await client.RunAnalysisAsync(new AnalysisRequest
        {
            Plugin = "token-stats",
            Model = "tiny",
            ParametersJson = JsonSerializer.Serialize(new { texts = new[] { "Once upon a time", "The cat sat" } }),
        }, new Recorder(progress));
        Assert.Equal(JobState.Succeeded, job.State);
        Assert.NotEmpty(progress);
        Assert.Equal("norms", Assert.Single(job.Result.Tables).Name);
        Assert.Equal(job.Id, (await client.GetJobAsync(job.Id)).Id);
        Assert.Contains((await client.ListJobsAsync("token-stats")).Jobs, j => j.Id == job.Id);
    }

    private sealed class Recorder(List<double> fractions) : IProgress<Progress>
    {
        public void Report(Progress value)
        {
            lock (fractions)
                fractions.Add(value.Fraction);
        }
    }

    [Fact]
    public async Task Artifacts_make_the_round_trip_and_bad_names_get_the_gateways_answer()
    {
        using var client = Alice();
        string from = TempFolders.Create("interpmesh-client-up-"), to = TempFolders.Create("interpmesh-client-down-");
        var big = new byte[3 << 20];
        new Random(3).NextBytes(big);
        await File.WriteAllBytesAsync(Path.Combine(from, "weights.bin"), big);
        await File.WriteAllTextAsync(Path.Combine(from, "cfg.json"), """{"d":1}""");

        var stored = await client.UploadArtifactAsync("client/round-trip", from, """{"note":"test"}""");
        Assert.Equal(2, stored.Files.Count);
        var info = await client.DownloadArtifactAsync("client/round-trip", to);
        Assert.Equal("client/round-trip", info.Name);
        Assert.Equal(big, await File.ReadAllBytesAsync(Path.Combine(to, "weights.bin")));
        Assert.Equal("""{"d":1}""", await File.ReadAllTextAsync(Path.Combine(to, "cfg.json")));
        Assert.Contains((await client.ListArtifactsAsync("client/")).Artifacts, a => a.Name == "client/round-trip");
        using (var admin = MeshClient.Connect(mesh.GatewayAddress, Mesh.AdminKey))
        {
            Assert.True(await admin.DeleteArtifactAsync("client/round-trip"));
            Assert.False(await admin.DeleteArtifactAsync("client/round-trip"));
        }

        // Bounded: a refused upload must end, not leave the writer waiting (seen once in CI before uploads left the retry policy).
        var bad = await Assert.ThrowsAsync<RpcException>(() => client.UploadArtifactAsync("../escape", from).WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
        Assert.Contains("not allowed", bad.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_large_upload_refused_at_its_header_ends_with_the_gateways_answer()
    {
        // 48 MiB: far beyond HTTP/2's flow-control windows, so a writer that kept writing after the
        // gateway answered would wait for window updates that never come.
        using var client = Alice();
        string from = TempFolders.Create("interpmesh-client-refused-");
        var big = new byte[48 << 20];
        new Random(5).NextBytes(big);
        await File.WriteAllBytesAsync(Path.Combine(from, "weights.bin"), big);
        for (int i = 0; i < 3; i++)
        {
            var bad = await Assert.ThrowsAsync<RpcException>(() => client.UploadArtifactAsync("bad name/" + i + "/..", from).WaitAsync(TimeSpan.FromSeconds(60)));
            Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
        }
        // The refused uploads left nothing behind and the gateway still takes a good one.
        Assert.DoesNotContain((await client.ListArtifactsAsync("bad name/")).Artifacts, a => true);
        File.Delete(Path.Combine(from, "weights.bin"));
        await File.WriteAllTextAsync(Path.Combine(from, "small.json"), "{}");
        Assert.Single((await client.UploadArtifactAsync("client/after-refusal", from)).Files);
    }

    [Fact]
    public async Task Keys_and_addresses_fail_with_what_to_fix()
    {
        using (var anonymous = MeshClient.Connect(mesh.GatewayAddress))
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => anonymous.ListPluginsAsync());
            Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        }
        using (var reader = MeshClient.Connect(mesh.GatewayAddress, Mesh.ReaderKey, "tiny"))
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => reader.RunAnalysisAsync(new AnalysisRequest { Plugin = "token-stats", Model = "tiny", ParametersJson = "{}" }));
            Assert.Equal(StatusCode.PermissionDenied, error.StatusCode);
        }
        var bad = Assert.Throws<ArgumentException>(() => MeshClient.Connect("localhost:50050"));
        Assert.Contains("http://", bad.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_client_library_depends_on_no_server_project_and_no_libtorch()
    {
        // The restore's full closure of src/Client: every package and project it brings.
        string assets = Path.Combine(RepoPaths.Root, "src", "Client", "obj", "project.assets.json");
        using var document = JsonDocument.Parse(File.ReadAllText(assets));
        var libraries = document.RootElement.GetProperty("libraries").EnumerateObject()
            .Select(l => (Name: l.Name.Split('/')[0], Type: l.Value.GetProperty("type").GetString()))
            .ToList();
        Assert.Equal(["InterpMesh.Contracts"], libraries.Where(l => l.Type == "project").Select(l => l.Name));
        Assert.DoesNotContain(libraries, l => l.Name.StartsWith("TorchSharp", StringComparison.OrdinalIgnoreCase)
            || l.Name.StartsWith("libtorch", StringComparison.OrdinalIgnoreCase)
            || l.Name.StartsWith("Grpc.AspNetCore", StringComparison.OrdinalIgnoreCase)
            || l.Name.StartsWith("Microsoft.AspNetCore", StringComparison.OrdinalIgnoreCase));
        var frameworks = document.RootElement.GetProperty("project").GetProperty("frameworks").EnumerateObject().Single().Value;
        Assert.False(frameworks.TryGetProperty("frameworkReferences", out var references) && references.EnumerateObject().Any(r => r.Name == "Microsoft.AspNetCore.App"),
            "the client library references the ASP.NET Core framework");
    }
}
