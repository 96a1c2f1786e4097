using System.Text;
using Grpc.Core;
using Grpc.Health.V1;
using InterpMesh.Contracts;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Issue #20, bounded records: what a client sends that the gateway stores and later lists
/// (parameters_json in job records; metadata_json and the file list in artifact manifests) is
/// refused over its limit before anything is stored, with the field, its size and the limit named,
/// and listings keep working for everyone afterwards. Names are bounded by their own rules and
/// quoted only in part.
/// </summary>
[Collection("gateways")]
public sealed class RecordLimitsTests(MeshFixture mesh) : IClassFixture<MeshFixture>
{
    private AnalysisService.AnalysisServiceClient Analyses => new(mesh.Channel);
    private ArtifactService.ArtifactServiceClient Artifacts => new(mesh.Channel);

    /// <summary>A JSON object of exactly <paramref name="bytes"/> UTF-8 bytes, padded with <paramref name="pad"/> (one or two bytes each).</summary>
    private static string JsonOfBytes(int bytes, string pad = "a")
    {
        const string Start = "{\"pad\":\"", End = "\"}";
        int room = bytes - Start.Length - End.Length;
        int each = Encoding.UTF8.GetByteCount(pad);
        var json = Start + string.Concat(Enumerable.Repeat(pad, room / each)) + new string('a', room % each) + End;
        Assert.Equal(bytes, Encoding.UTF8.GetByteCount(json));
        return json;
    }

    private static void AssertRefusedForGood(RpcException e, string detail)
    {
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(detail, e.Status.Detail);
        Assert.Equal("-1", e.Trailers.GetValue(RetryPushback.Trailer));
    }

    private async Task AssertStillServing()
    {
        Assert.NotNull(await Analyses.ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.ReaderKey)));
        Assert.NotNull(await Artifacts.ListArtifactsAsync(new ListArtifactsRequest(), Mesh.As(Mesh.ReaderKey)));
        var health = await new Health.HealthClient(mesh.Channel).CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
    }

    [Fact]
    public async Task Parameters_over_the_limit_are_refused_before_a_job_exists_and_jobs_stay_listable()
    {
        var before = (await Analyses.ListJobsAsync(new ListJobsRequest { Limit = 1000 }, Mesh.As(Mesh.AdminKey))).Jobs.Select(j => j.Id).ToHashSet();
        const string Huge = "parameters_json is 19.1 MiB; the limit is 256 KiB (Gateway:Limits:MaxParametersBytes): send less, or store large inputs as an artifact and pass its name";
        var request = new AnalysisRequest { Plugin = "throws", ParametersJson = JsonOfBytes(20_000_000) };
        AssertRefusedForGood(await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(request, Mesh.As(Mesh.AliceKey)).ResponseAsync), Huge);
        AssertRefusedForGood(await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = Analyses.RunAnalysis(request, Mesh.As(Mesh.AliceKey));
            await call.ResponseStream.MoveNext(CancellationToken.None);
        }), Huge);
        // Bytes are counted, not characters: 200 Ki two-byte characters are 400 KiB.
        var wide = new AnalysisRequest { Plugin = "throws", ParametersJson = JsonOfBytes(400 << 10, "é") };
        Assert.True(wide.ParametersJson.Length < 256 << 10);
        AssertRefusedForGood(await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(wide, Mesh.As(Mesh.AliceKey)).ResponseAsync),
            "parameters_json is 400 KiB; the limit is 256 KiB (Gateway:Limits:MaxParametersBytes): send less, or store large inputs as an artifact and pass its name");
        var oneOver = new AnalysisRequest { Plugin = "throws", ParametersJson = JsonOfBytes((256 << 10) + 1, "é") };
        AssertRefusedForGood(await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(oneOver, Mesh.As(Mesh.AliceKey)).ResponseAsync),
            "parameters_json is 262145 bytes; the limit is 256 KiB (Gateway:Limits:MaxParametersBytes): send less, or store large inputs as an artifact and pass its name");

        // Exactly at the limit is accepted, and listed with everything else.
        var atLimit = JsonOfBytes(256 << 10, "é");
        var job = await Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "throws", ParametersJson = atLimit }, Mesh.As(Mesh.AliceKey));
        var listed = (await Analyses.ListJobsAsync(new ListJobsRequest { Limit = 1000 }, Mesh.As(Mesh.AdminKey))).Jobs;
        Assert.Equal([job.Id], listed.Select(j => j.Id).Where(id => !before.Contains(id)));
        Assert.Equal(atLimit, (await Analyses.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey))).ParametersJson);
        await AssertStillServing();
    }

    [Fact]
    public async Task Plugin_and_model_names_over_their_length_are_refused_quoting_only_their_start()
    {
        var plugin = await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = new string('p', 1 << 20) }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, plugin.StatusCode);
        Assert.Equal("plugin is 1048576 characters long ('pppppppppppppppppppp…'); it must be a plugin id as ListPlugins shows it, at most 63 characters", plugin.Status.Detail);
        var model = await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "throws", Model = new string('m', 129) }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, model.StatusCode);
        Assert.Equal("model is 129 characters long ('mmmmmmmmmmmmmmmmmmmm…'); it must be a model name as the gateway's configuration has it, at most 128 characters", model.Status.Detail);
        await AssertStillServing();
    }

    /// <summary>Uploads a header (and no data) and returns how the gateway answered.</summary>
    private async Task<Contracts.V1.ArtifactInfo> Put(Contracts.V1.ArtifactInfo header)
    {
        using var call = Artifacts.PutArtifact(Mesh.As(Mesh.AliceKey));
        try
        {
            await call.RequestStream.WriteAsync(new ArtifactChunk { Header = header });
            await call.RequestStream.CompleteAsync();
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException)
        {
            // Refused before the stream was all sent: the response says why.
        }
        return await call.ResponseAsync;
    }

    [Fact]
    public async Task Metadata_and_file_lists_over_their_limits_are_refused_and_artifacts_stay_listable()
    {
        string prefix = $"limits/{Guid.NewGuid():N}/";
        var big = new Contracts.V1.ArtifactInfo { Name = prefix + "big", MetadataJson = JsonOfBytes(5 << 20) };
        AssertRefusedForGood(await Assert.ThrowsAsync<RpcException>(() => Put(big)),
            "metadata_json is 5 MiB; the limit is 64 KiB (Gateway:Limits:MaxMetadataBytes): send less, or store large inputs as an artifact and pass its name");
        var oneOver = new Contracts.V1.ArtifactInfo { Name = prefix + "one-over", MetadataJson = JsonOfBytes((64 << 10) + 1) };
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(() => Put(oneOver))).StatusCode);
        var files = new Contracts.V1.ArtifactInfo { Name = prefix + "many" };
        files.Files.AddRange(Enumerable.Range(0, 257).Select(i => new ArtifactFileInfo { Name = $"f{i}.bin", Bytes = 0 }));
        AssertRefusedForGood(await Assert.ThrowsAsync<RpcException>(() => Put(files)),
            "the header lists 257 files; the limit is 256 (Gateway:Limits:MaxArtifactFiles): put the files in fewer, larger ones, or split the artifact");

        // Names keep their rules, and a long one is not echoed back.
        var longName = await Assert.ThrowsAsync<RpcException>(() => Put(new Contracts.V1.ArtifactInfo { Name = prefix + new string('n', 1 << 20) }));
        Assert.Equal(StatusCode.InvalidArgument, longName.StatusCode);
        Assert.Equal($"artifact name is {prefix.Length + (1 << 20)} characters long; the limit is 200", longName.Status.Detail);
        var longFile = new Contracts.V1.ArtifactInfo { Name = prefix + "long-file" };
        longFile.Files.Add(new ArtifactFileInfo { Name = new string('f', 1 << 20), Bytes = 0 });
        var fileRefusal = await Assert.ThrowsAsync<RpcException>(() => Put(longFile));
        Assert.Equal(StatusCode.InvalidArgument, fileRefusal.StatusCode);
        Assert.Equal("artifact file name is 1048576 characters long; the limit is 100", fileRefusal.Status.Detail);

        // At the limits: stored and listed.
        var atLimit = new Contracts.V1.ArtifactInfo { Name = prefix + "at-limit", MetadataJson = JsonOfBytes(64 << 10) };
        atLimit.Files.AddRange(Enumerable.Range(0, 256).Select(i => new ArtifactFileInfo { Name = $"f{i}.bin", Bytes = 0 }));
        Assert.Equal(256, (await Put(atLimit)).Files.Count);
        var listed = await Artifacts.ListArtifactsAsync(new ListArtifactsRequest { Prefix = prefix }, Mesh.As(Mesh.ReaderKey));
        Assert.Equal([prefix + "at-limit"], listed.Artifacts.Select(a => a.Name));
        Assert.Equal(atLimit.MetadataJson, listed.Artifacts[0].MetadataJson);
        await AssertStillServing();
    }

    [Fact]
    public async Task A_page_of_large_artifacts_ends_before_three_mebibytes_and_the_next_pages_hold_the_rest()
    {
        string prefix = $"budget/{Guid.NewGuid():N}/";
        var names = Enumerable.Range(0, 60).Select(i => $"{prefix}a{i:D2}").ToList();
        foreach (var name in names)
            await Put(new Contracts.V1.ArtifactInfo { Name = name, MetadataJson = JsonOfBytes(63 << 10) });
        var seen = new List<string>();
        var request = new ListArtifactsRequest { Prefix = prefix, PageSize = 1000 };
        int pages = 0;
        do
        {
            var page = await Artifacts.ListArtifactsAsync(request, Mesh.As(Mesh.ReaderKey));
            Assert.True(page.CalculateSize() <= 3 << 20, $"a page of {page.CalculateSize()} bytes");
            Assert.NotEmpty(page.Artifacts);
            seen.AddRange(page.Artifacts.Select(a => a.Name));
            request.PageToken = page.NextPageToken;
            pages++;
        }
        while (request.PageToken.Length > 0);
        // 60 × 63 KiB is about 3.7 MiB: two pages, every artifact once, in name order.
        Assert.Equal(2, pages);
        Assert.Equal(names, seen);
    }
    [Fact]
    public async Task A_result_too_large_for_a_job_record_fails_the_job_with_the_limit_named_and_listings_keep_working()
    {
        // 5 MiB of table: more than the 3 MiB a job keeps (Worker:MaxResultBytes), and more than a client receives in one message.
        var big = await Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "bulky", ParametersJson = """{"bytes": 5242880}""" }, Mesh.As(Mesh.AliceKey));
        var failed = await SharedJobsTests.WaitUntil(Analyses, big.Id, j => j.State is JobState.Failed or JobState.Succeeded);
        Assert.Equal(JobState.Failed, failed.State);
        Assert.Equal("RESOURCE_EXHAUSTED", failed.ErrorCode);
        Assert.Equal(JobErrorCode.ResourceExhausted, failed.ErrorStatus);
        Assert.Contains("plugin 'bulky' returned a result of 5.0", failed.Error, StringComparison.Ordinal);
        Assert.Contains("table 'payload'", failed.Error, StringComparison.Ordinal);
        Assert.Contains("Worker:MaxResultBytes", failed.Error, StringComparison.Ordinal);
        Assert.Contains("artifact", failed.Error, StringComparison.Ordinal);

        // One under the limit is kept and read back whole through GetJob.
        var fits = await Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "bulky", ParametersJson = """{"bytes": 2097152}""" }, Mesh.As(Mesh.AliceKey));
        var done = await SharedJobsTests.WaitUntil(Analyses, fits.Id, j => j.State is JobState.Failed or JobState.Succeeded);
        Assert.True(done.State == JobState.Succeeded, done.Error);
        Assert.Equal(JobErrorCode.Unspecified, done.ErrorStatus);
        Assert.Equal("[[\"" + new string('x', 2097152) + "\"]]", done.Result.Tables.Single().RowsJson);
        await AssertStillServing();
    }
}

/// <summary>The limits' own settings are checked at start, every error named.</summary>
public sealed class LimitsOptionsTests
{
    [Fact]
    public void Limits_that_cannot_work_and_model_names_over_their_length_stop_the_start()
    {
        var options = new Configuration.GatewayOptions();
        options.Models["tiny"] = new InterpMesh.Routing.ModelRoute { Endpoints = ["http://127.0.0.1:1"] };
        options.Models[new string('m', 129)] = new InterpMesh.Routing.ModelRoute { Endpoints = ["http://127.0.0.1:1"] };
        options.Auth.Enabled = false;
        options.Limits.MaxParametersBytes = 1;
        options.Limits.MaxMetadataBytes = 1 << 20;
        options.Limits.MaxArtifactFiles = 0;
        options.Limits.DefaultPageSize = 50;
        options.Limits.MaxPageSize = 10;
        var result = new Configuration.GatewayOptionsValidator().Validate(null, options);
        Assert.True(result.Failed);
        Assert.Equal(
        [
            "Gateway:Limits:MaxParametersBytes (1) and MaxMetadataBytes (1048576) must be at least 2 (\"{}\")",
            "Gateway:Limits:MaxMetadataBytes is 1048576; at most 786432, so that an artifact always fits in a list page",
            "Gateway:Limits:MaxArtifactFiles must be between 1 and 4096, got 0",
            "Gateway:Limits:DefaultPageSize (50) must be at least 1 and at most MaxPageSize (10)",
            $"Gateway:Models has a model name of 129 characters ('{new string('m', 40)}…'); the limit is 128",
        ], result.Failures);
        // The defaults pass.
        var defaults = new Configuration.GatewayOptions { Auth = { Enabled = false } };
        defaults.Models["tiny"] = new InterpMesh.Routing.ModelRoute { Endpoints = ["http://127.0.0.1:1"] };
        Assert.True(new Configuration.GatewayOptionsValidator().Validate(null, defaults).Succeeded);
    }
}

/// <summary>What plugins save goes through the store, not the API edge: the store keeps the metadata limit too.</summary>
public sealed class StoredMetadataLimitTests
{
    [Fact]
    public async Task An_artifact_a_plugin_saves_with_metadata_over_the_limit_is_refused_and_nothing_is_stored()
    {
        string root = TempFolders.Create("interpmesh-gw-meta-");
        try
        {
            var store = new Artifacts.ArtifactStore(root, maxMetadataBytes: 100);
            var files = new Dictionary<string, byte[]> { ["a.bin"] = [1, 2, 3] };
            var big = new System.Text.Json.Nodes.JsonObject { ["note"] = new string('x', 200) };
            var refused = await Assert.ThrowsAsync<ArgumentException>(() => store.SaveFilesAsync("plugin/big", files, big));
            Assert.Equal("artifact 'plugin/big' has 211 bytes of metadata; the limit is 100 (Gateway:Limits:MaxMetadataBytes)", refused.Message);
            Assert.Empty(store.List("plugin/"));
            var small = new System.Text.Json.Nodes.JsonObject { ["note"] = "ok" };
            Assert.Equal("plugin/small", (await store.SaveFilesAsync("plugin/small", files, small)).Name);
            Assert.Equal(["plugin/small"], store.List("plugin/").Select(a => a.Name));
        }
        finally
        {
            TempFolders.Delete(root);
        }
    }

}
