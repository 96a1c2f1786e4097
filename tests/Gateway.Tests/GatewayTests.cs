using System.Text.Json;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.DependencyInjection;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;
using HookPlan = InterpMesh.Runtime.Hooks.HookPlan;

namespace InterpMesh.Gateway.Tests;

/// <summary>The gateway in front of a real model service: plugins, jobs, artifacts, auth, the proxied model API, metrics.</summary>
[Collection("gateways")]
public sealed class GatewayTests(MeshFixture mesh) : IClassFixture<MeshFixture>
{
    private AnalysisService.AnalysisServiceClient Analyses => new(mesh.Channel);
    private ArtifactService.ArtifactServiceClient Artifacts => new(mesh.Channel);

    private static async Task<(List<JobEvent> Events, Job Final)> Drain(AsyncServerStreamingCall<JobEvent> call)
    {
        var events = new List<JobEvent>();
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            events.Add(e);
        return (events, events.Last().Finished);
    }

    private static async Task<Job> WaitFor(AnalysisService.AnalysisServiceClient client, string id, JobState state, string key = Mesh.AliceKey)
    {
        for (var deadline = DateTime.UtcNow.AddSeconds(60); DateTime.UtcNow < deadline; await Task.Delay(50))
        {
            var job = await client.GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(key));
            if (job.State == state || JobRecordIsFinal(job.State))
                return job;
        }
        throw new TimeoutException($"job {id} never reached {state}");
    }

    private static bool JobRecordIsFinal(JobState s) => s is JobState.Succeeded or JobState.Failed or JobState.Cancelled or JobState.Interrupted;

    [Fact]
    public async Task Plugins_are_listed_and_broken_ones_say_why_while_the_gateway_keeps_serving()
    {
        var list = await Analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
        var byId = list.Plugins.ToDictionary(p => p.Id);
        foreach (var ok in new[] { "token-stats", "slow", "throws", "hangs" })
            Assert.True(byId[ok].Loaded, $"{ok}: {byId[ok].Error}");
        Assert.Contains("targets SDK 3.0", byId["future-sdk"].Error, StringComparison.Ordinal);
        Assert.Contains("missing licence file", byId["throws-on-load"].Error, StringComparison.Ordinal);
        Assert.Contains("BadImageFormat", byId["broken-dll"].Error, StringComparison.Ordinal);
        Assert.Contains("plugin.json is missing", byId["no-manifest"].Error, StringComparison.Ordinal);
        Assert.All(new[] { "future-sdk", "throws-on-load", "broken-dll", "no-manifest" }, id => Assert.False(byId[id].Loaded));

        var described = await Analyses.DescribePluginAsync(new DescribePluginRequest { Id = "token-stats" }, Mesh.As(Mesh.ReaderKey));
        Assert.Equal(InterpMesh.Plugins.SdkVersion.Current, described.SdkVersion);
        Assert.Contains("\"texts\"", described.ParameterSchemaJson, StringComparison.Ordinal);
        var missing = await Assert.ThrowsAsync<RpcException>(() => Analyses.DescribePluginAsync(new DescribePluginRequest { Id = "nope" }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        var broken = await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "broken-dll" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, broken.StatusCode);
        Assert.Contains("failed to load", broken.Status.Detail, StringComparison.Ordinal);

        var health = await new Health.HealthClient(mesh.Channel).CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
    }

    [Fact]
    public async Task The_third_party_plugin_runs_through_the_gateway_and_its_numbers_match_the_runtime()
    {
        string[] texts = ["Once upon a time there was a cat.", "The dog ran to the park and played."];
        var request = new AnalysisRequest
        {
            Plugin = "token-stats",
            ParametersJson = JsonSerializer.Serialize(new { texts, save_as = "samples/norms" }),
        };
        var (events, final) = await Drain(Analyses.RunAnalysis(request, Mesh.As(Mesh.AliceKey)));
        Assert.True(final.State == JobState.Succeeded, final.Error);
        Assert.Contains(events, e => e.Progress is { Message: "text 2/2" });
        Assert.Equal("alice", final.Owner);

        // Second computation path: the runtime in this process, same model and texts.
        using var model = ModelLoader.Load(RepoPaths.Models("stories260K/stories260K.bin"));
        var sums = new Dictionary<string, double>();
        long tokens = 0;
        using (inference_mode())
        using (NewDisposeScope())
        {
            foreach (var text in texts)
            {
                var (ids, mask) = TokenBatch.Pad([model.RequireTokenizer().Encode(text)], PaddingSide.Left);
                var plan = HookPlan.Build(model.Transformer.Hooks, [new CaptureRequest(["blocks.*.hook_resid_post"])], null);
                model.Transformer.Forward(ids, mask, plan, (h, t) =>
                {
                    var n = t.norm(-1);
                    sums[h.Name] = sums.GetValueOrDefault(h.Name) + n.sum().item<float>();
                    if (h.Name == "blocks.0.hook_resid_post")
                        tokens += n.NumberOfElements;
                }, LogitsMode.None);
            }
        }
        var table = final.Result.Tables.Single(t => t.Name == "norms");
        Assert.Equal(["hook", "mean_norm"], table.Columns);
        var rows = JsonDocument.Parse(table.RowsJson).RootElement.EnumerateArray().ToList();
        Assert.Equal(model.Config.NLayers, rows.Count);
        foreach (var row in rows)
        {
            string hook = row[0].GetString()!;
            double expected = sums[hook] / tokens;
            Assert.True(Math.Abs(expected - row[1].GetDouble()) <= 1e-4 * Math.Max(1, expected), $"{hook}: plugin {row[1].GetDouble()}, runtime {expected}");
        }
        Assert.Equal("image/svg+xml", final.Result.Figures.Single().MediaType);
        Assert.StartsWith("<svg", final.Result.Figures.Single().Content.ToStringUtf8(), StringComparison.Ordinal);

        // The artifact it saved is listed and downloadable, checksum and all.
        Assert.Equal(["samples/norms"], final.Result.Artifacts);
        var listed = await Artifacts.ListArtifactsAsync(new ListArtifactsRequest { Prefix = "samples/" }, Mesh.As(Mesh.ReaderKey));
        var info = listed.Artifacts.Single(a => a.Name == "samples/norms");
        Assert.Equal("tensors.safetensors", info.Files.Single().Name);
        var (header, files) = await Download("samples/norms", Mesh.ReaderKey);
        Assert.Equal(info.Files.Single().Sha256, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(files["tensors.safetensors"])));
        Assert.Contains("\"model\":\"tiny\"", header.MetadataJson, StringComparison.Ordinal);
    }

    private async Task<(Contracts.V1.ArtifactInfo Header, Dictionary<string, byte[]> Files)> Download(string name, string key)
    {
        using var call = Artifacts.GetArtifact(new GetArtifactRequest { Name = name }, Mesh.As(key));
        Contracts.V1.ArtifactInfo? header = null;
        var files = new Dictionary<string, MemoryStream>();
        await foreach (var chunk in call.ResponseStream.ReadAllAsync())
        {
            if (chunk.Header is { } h)
            {
                header = h;
                continue;
            }
            if (!files.TryGetValue(chunk.Data.File, out var s))
                files[chunk.Data.File] = s = new MemoryStream();
            Assert.Equal(s.Length, chunk.Data.Offset);
            chunk.Data.Data.WriteTo(s);
        }
        return (header!, files.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()));
    }

    [Fact]
    public async Task A_job_outlives_its_client_and_its_result_is_fetched_after_reconnecting()
    {
        string id;
        using (var first = Mesh.Channel(mesh.GatewayAddress))
        {
            var job = await new AnalysisService.AnalysisServiceClient(first).SubmitJobAsync(
                new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 8}""" }, Mesh.As(Mesh.AliceKey));
            Assert.True(job.State is JobState.Queued or JobState.Running, job.State.ToString());
            id = job.Id;
        }
        using var second = Mesh.Channel(mesh.GatewayAddress);
        var client = new AnalysisService.AnalysisServiceClient(second);
        var (_, final) = await Drain(client.WatchJob(new WatchJobRequest { Id = id }, Mesh.As(Mesh.AliceKey)));
        Assert.Equal(JobState.Succeeded, final.State);
        // Its owner fetches it (another key may not: see Jobs_belong_to_their_key_and_only_admins_see_every_key_s).
        var fetched = await client.GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
        Assert.Equal("{\"steps\":8}", fetched.Result.SummaryJson);
        var listed = await client.ListJobsAsync(new ListJobsRequest { Plugin = "slow" }, Mesh.As(Mesh.AliceKey));
        Assert.Contains(listed.Jobs, j => j.Id == id && j.Result is null);
    }

    [Fact]
    public async Task A_running_job_is_cancelled_by_its_owner_but_not_by_another_key()
    {
        var job = await Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
        await WaitFor(Analyses, job.Id, JobState.Running);
        var denied = await Assert.ThrowsAsync<RpcException>(() => Analyses.CancelJobAsync(new CancelJobRequest { Id = job.Id }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        await Analyses.CancelJobAsync(new CancelJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey));
        var final = await WaitFor(Analyses, job.Id, JobState.Cancelled);
        Assert.Equal(JobState.Cancelled, final.State);
        Assert.Contains("cancelled by alice", final.Error, StringComparison.Ordinal);
        Assert.Equal("CANCELLED", final.ErrorCode);
    }

    [Fact]
    public async Task A_plugin_that_throws_fails_its_job_only()
    {
        var (_, final) = await Drain(Analyses.RunAnalysis(new AnalysisRequest { Plugin = "throws" }, Mesh.As(Mesh.AliceKey)));
        Assert.Equal(JobState.Failed, final.State);
        Assert.Contains("the plugin broke on purpose", final.Error, StringComparison.Ordinal);
        Assert.Equal("INTERNAL", final.ErrorCode);
        var (_, next) = await Drain(Analyses.RunAnalysis(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey)));
        Assert.Equal(JobState.Succeeded, next.State);
    }

    [Fact]
    public async Task A_plugin_that_hangs_past_its_time_limit_is_abandoned_and_its_job_fails()
    {
        var (_, final) = await Drain(Analyses.RunAnalysis(new AnalysisRequest { Plugin = "hangs", TimeoutSeconds = 1 }, Mesh.As(Mesh.AliceKey)));
        Assert.Equal(JobState.Failed, final.State);
        Assert.Contains("exceeded its time limit of 1 s", final.Error, StringComparison.Ordinal);
        Assert.Contains("abandoned", final.Error, StringComparison.Ordinal);
        Assert.Equal("DEADLINE_EXCEEDED", final.ErrorCode);
        var list = await Analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
        Assert.NotEmpty(list.Plugins);
    }

    [Theory]
    [InlineData("""{"texts": "not a list"}""", "parameters.texts: expected array, got string")]
    [InlineData("""{}""", "parameters.texts is required")]
    [InlineData("""{"texts": ["a"], "colour": 1}""", "parameters.colour is not a known parameter")]
    [InlineData("""{"texts": []}""", "parameters.texts: has 0 items, needs at least 1")]
    [InlineData("""[1, 2]""", "parameters_json must be a JSON object")]
    [InlineData("""{"texts": [""", "parameters_json is not valid JSON")]
    public async Task Invalid_parameters_are_refused_before_the_job_starts(string parameters, string message)
    {
        var error = await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "token-stats", ParametersJson = parameters }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(message, error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Model_calls_through_the_gateway_equal_direct_calls_bit_for_bit()
    {
        var request = new RunRequest
        {
            Inputs = { new Input { Text = "Once upon a time" } },
            Captures = { new Capture { Hooks = { "blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern" } } },
            Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last, TopK = 5 },
        };
        static async Task<List<RunResponse>> Collect(Contracts.V1.ModelService.ModelServiceClient client, RunRequest r, CallOptions options)
        {
            using var call = client.Run(r, options);
            var all = new List<RunResponse>();
            await foreach (var m in call.ResponseStream.ReadAllAsync())
                all.Add(m);
            return all;
        }
        using var direct = Mesh.Channel(mesh.ServiceAddress);
        var viaGateway = await Collect(new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel), request, Mesh.As(Mesh.AliceKey));
        var straight = await Collect(new Contracts.V1.ModelService.ModelServiceClient(direct), request, new CallOptions());
        Assert.Equal(straight.Count, viaGateway.Count);
        for (int i = 0; i < straight.Count; i++)
            Assert.Equal(straight[i].ToByteArray(), viaGateway[i].ToByteArray());

        var unknown = await Assert.ThrowsAsync<RpcException>(() => new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel)
            .GetModelInfoAsync(new GetModelInfoRequest(), new CallOptions(new Metadata { { "authorization", $"Bearer {Mesh.ReaderKey}" }, { "interpmesh-model", "gpt5" } })).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("this gateway serves tiny", unknown.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_reader_gets_weights_through_the_gateway_reassembled_with_their_shapes()
    {
        var models = new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel);
        var info = await models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey));
        // Through the client library, as a reader (GetWeights needs the read role only).
        using var reader = Client.MeshClient.Connect(mesh.GatewayAddress, Mesh.ReaderKey);
        var weights = new List<Contracts.Tensors.AssembledActivation>();
        await foreach (var w in reader.GetWeightsAsync(["blocks.*.attn.W_O"]))
            weights.Add(w);
        Assert.Equal(Enumerable.Range(0, info.NLayers).Select(l => $"blocks.{l}.attn.W_O"), weights.Select(w => w.Hook));
        Assert.All(weights, w => Assert.Equal([info.NHeads, info.DHead, info.DModel], w.Tensor.Shape));
        Assert.All(weights, w => Assert.Contains(w.Tensor.ToFloat32(), v => v != 0));

        var empty = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = models.GetWeights(new GetWeightsRequest(), Mesh.As(Mesh.ReaderKey));
            await call.ResponseStream.MoveNext();
        });
        Assert.Equal(StatusCode.InvalidArgument, empty.StatusCode);
        Assert.Contains("name the weights", empty.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keys_and_roles_are_enforced_on_every_service()
    {
        var models = new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel);
        var none = await Assert.ThrowsAsync<RpcException>(() => models.GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, none.StatusCode);
        Assert.Contains("authorization: Bearer", none.Status.Detail, StringComparison.Ordinal);
        var wrong = await Assert.ThrowsAsync<RpcException>(() => Analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As("not-a-key")).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, wrong.StatusCode);
        var reader = await Assert.ThrowsAsync<RpcException>(() => Analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "slow" }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, reader.StatusCode);
        Assert.Contains("lacks the 'analyze' role", reader.Status.Detail, StringComparison.Ordinal);
        var readerRun = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = models.Run(new RunRequest { Inputs = { new Input { Text = "x" } } }, Mesh.As(Mesh.ReaderKey));
            await call.ResponseStream.MoveNext();
        });
        Assert.Equal(StatusCode.PermissionDenied, readerRun.StatusCode);
        var delete = await Assert.ThrowsAsync<RpcException>(() => Artifacts.DeleteArtifactAsync(new DeleteArtifactRequest { Name = "x" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, delete.StatusCode);
        // Allowed calls still work for the same keys.
        Assert.NotEmpty((await models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey))).Hooks);
    }

    private async Task<Contracts.V1.ArtifactInfo> Upload(string name, Dictionary<string, byte[]> files, string key = Mesh.AliceKey, int chunk = 1000)
    {
        using var call = Artifacts.PutArtifact(Mesh.As(key));
        var header = new Contracts.V1.ArtifactInfo { Name = name, MetadataJson = """{"purpose":"test"}""" };
        header.Files.AddRange(files.Select(f => new ArtifactFileInfo { Name = f.Key, Bytes = f.Value.Length }));
        try
        {
            await call.RequestStream.WriteAsync(new ArtifactChunk { Header = header });
            foreach (var (file, bytes) in files)
            {
                for (int o = 0; o < bytes.Length; o += chunk)
                    await call.RequestStream.WriteAsync(new ArtifactChunk { Data = new FileData { File = file, Offset = o, Data = ByteString.CopyFrom(bytes, o, Math.Min(chunk, bytes.Length - o)) } });
            }
            await call.RequestStream.CompleteAsync();
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException)
        {
            // The server refused the upload before it was all sent: its answer is the call's status.
        }
        return await call.ResponseAsync;
    }

    [Fact]
    public async Task Artifacts_round_trip_and_names_cannot_escape_the_store()
    {
        var rng = new Random(3);
        var cfg = "{\"d_in\": 64}"u8.ToArray();
        var weights = new byte[5000];
        rng.NextBytes(weights);
        var stored = await Upload("saes/test-sae", new() { ["cfg.json"] = cfg, ["sae_weights.safetensors"] = weights });
        Assert.Equal(2, stored.Files.Count);
        var (header, files) = await Download("saes/test-sae", Mesh.ReaderKey);
        Assert.Equal(weights, files["sae_weights.safetensors"]);
        Assert.Equal(cfg, files["cfg.json"]);
        Assert.Contains("test", header.MetadataJson, StringComparison.Ordinal);

        foreach (var bad in new[] { "../outside", "a/../../etc", "/etc/passwd", "saes/../..", "UPPER", "", "a//b", "x.artifact/y" })
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => Upload(bad, new() { ["f"] = [1] }));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            var g = await Assert.ThrowsAsync<RpcException>(() => Download(bad, Mesh.ReaderKey));
            Assert.Equal(StatusCode.InvalidArgument, g.StatusCode);
        }
        var badFile = await Assert.ThrowsAsync<RpcException>(() => Upload("ok/name", new() { ["../../escape"] = [1] }));
        Assert.Equal(StatusCode.InvalidArgument, badFile.StatusCode);
        Assert.False(File.Exists(Path.Combine(mesh.DataPath, "escape")));

        var gone = await Artifacts.DeleteArtifactAsync(new DeleteArtifactRequest { Name = "saes/test-sae" }, Mesh.As(Mesh.AdminKey));
        Assert.True(gone.Deleted);
        var missing = await Assert.ThrowsAsync<RpcException>(() => Download("saes/test-sae", Mesh.ReaderKey));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
    }

    [Fact]
    public async Task A_truncated_upload_stores_nothing_and_a_corrupted_file_is_reported()
    {
        using (var call = Artifacts.PutArtifact(Mesh.As(Mesh.AliceKey)))
        {
            var header = new Contracts.V1.ArtifactInfo { Name = "partial/one", Files = { new ArtifactFileInfo { Name = "data.bin", Bytes = 100 } } };
            await call.RequestStream.WriteAsync(new ArtifactChunk { Header = header });
            await call.RequestStream.WriteAsync(new ArtifactChunk { Data = new FileData { File = "data.bin", Offset = 0, Data = ByteString.CopyFrom(new byte[40]) } });
            await call.RequestStream.CompleteAsync();
            var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.Contains("ended after 40 of the 100 bytes", e.Status.Detail, StringComparison.Ordinal);
        }
        var none = await Artifacts.ListArtifactsAsync(new ListArtifactsRequest { Prefix = "partial/" }, Mesh.As(Mesh.ReaderKey));
        Assert.Empty(none.Artifacts);

        await Upload("corrupt/one", new() { ["data.bin"] = new byte[64] });
        var path = Path.Combine(mesh.DataPath, "artifacts", "corrupt", "one.artifact", "data.bin");
        File.WriteAllBytes(path, [.. Enumerable.Repeat((byte)1, 64)]);
        var error = await Assert.ThrowsAsync<RpcException>(() => Download("corrupt/one", Mesh.ReaderKey));
        Assert.Equal(StatusCode.DataLoss, error.StatusCode);
        Assert.Contains("does not match its recorded SHA-256", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_real_prometheus_server_scrapes_the_gateway()
    {
        await Analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
        string body = await PrometheusScrape.QueryAsync(mesh.MetricsPort, "interpmesh-gateway",
            "interpmesh_gateway_requests_total{method=\"ListPlugins\",status=\"OK\",key=\"reader\"}");
        Assert.Contains("interpmesh-gateway", body, StringComparison.Ordinal);
        using var http = new HttpClient();
        var text = await http.GetStringAsync($"http://127.0.0.1:{mesh.MetricsPort}/metrics");
        var failed = text.Split('\n').Where(l => l.StartsWith("interpmesh_gateway_plugins_failed", StringComparison.Ordinal)).ToList();
        Assert.True(failed.Any(l => l.Split(' ')[1] == "4"), $"expected 4 failed plugin folders, got: {string.Join(" | ", text.Split('\n').Where(l => l.StartsWith("interpmesh", StringComparison.Ordinal)))}");
        Assert.DoesNotContain(Mesh.ReaderKey, text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_job_s_model_calls_count_for_its_key_in_the_store_and_in_the_metrics()
    {
        var store = mesh.GatewayServices.GetRequiredService<InterpMesh.Jobs.IJobStore>();
        var admin = new InterpMesh.Jobs.JobCaller("test", IsAdmin: true);
        long before = (await store.UsageAsync()).SingleOrDefault(u => u.Owner == "alice")?.Usage.ModelCalls ?? 0;
        var (_, final) = await Drain(Analyses.RunAnalysis(new AnalysisRequest { Plugin = "chatty", ParametersJson = """{"steps": 3}""" }, Mesh.As(Mesh.AliceKey)));
        Assert.True(final.State == JobState.Succeeded, final.Error);

        // The worker records usage before it completes the job: the record has it once the job is final.
        var job = await store.GetAsync(final.Id, admin);
        Assert.Equal(3, job.Usage.ModelCalls);
        Assert.True(job.Usage.ModelTime > TimeSpan.Zero, "model time was not recorded");
        // Tokens: the plugin ran "Once upon a time" three times; one row's length as the model service
        // itself reports it (the shape of the ids it ran, not the mask the worker counts).
        long length;
        using var direct = Mesh.Channel(mesh.ServiceAddress);
        using (var call = new Contracts.V1.ModelService.ModelServiceClient(direct).Run(new RunRequest { Inputs = { new Input { Text = "Once upon a time" } } }))
        {
            var result = (await call.ResponseStream.ReadAllAsync().ToListAsync()).Single(m => m.Result is not null).Result;
            length = result.Tokens.Shape[1];
        }
        Assert.True(length > 1, $"'Once upon a time' ran as {length} tokens");
        Assert.Equal(3 * length, job.Usage.Tokens);
        var alice = (await store.UsageAsync()).Single(u => u.Owner == "alice");
        Assert.True(alice.Usage.ModelCalls >= before + 3, $"alice's total went from {before} to {alice.Usage.ModelCalls}");

        // Exported per key (refreshed every 5 s from the store).
        using var http = new HttpClient();
        string line = "", seen = "";
        for (var deadline = DateTime.UtcNow.AddSeconds(30); DateTime.UtcNow < deadline && line.Length == 0; await Task.Delay(500))
        {
            var text = await http.GetStringAsync($"http://127.0.0.1:{mesh.MetricsPort}/metrics");
            var lines = text.Split('\n').Where(l => l.StartsWith("interpmesh_jobs_key_", StringComparison.Ordinal)).ToList();
            seen = string.Join(" | ", lines);
            line = lines.FirstOrDefault(l => l.StartsWith("interpmesh_jobs_key_model_calls", StringComparison.Ordinal) && l.Contains("key=\"alice\"", StringComparison.Ordinal)
                && long.Parse(l.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture) >= before + 3) ?? "";
            if (line.Length > 0 && !lines.Any(l => l.StartsWith("interpmesh_jobs_key_tokens", StringComparison.Ordinal) && l.Contains("key=\"alice\"", StringComparison.Ordinal)
                && long.Parse(l.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture) >= 3 * length))
                line = "";
        }
        Assert.True(line.Length > 0, $"no interpmesh_jobs_key_model_calls line for alice at {before + 3} or more (with tokens at {3 * length} or more) within 30 s; the per-key lines were: {seen}");
    }
}
