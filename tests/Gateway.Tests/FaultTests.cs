using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Faults: the model service killed under a stream and under a job and then brought back; a plugin
/// allocating without bound in a worker with a heap limit. The gateway and the worker keep serving
/// throughout. Model services, gateways and workers that are killed run as their own processes (<see cref="HostProcess"/>).
/// </summary>
[Collection("gateways")]
public sealed class FaultTests
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);

    private static string TempDir() => TempFolders.Create("interpmesh-gw-");

    /// <summary>A model service of <paramref name="modelPath"/> as its own process on <paramref name="port"/>.</summary>
    private static HostProcess StartModelService(string modelPath, int port) => HostProcess.Start("model service", "InterpMesh.ModelService", new Dictionary<string, string?>
    {
        ["ModelService:ModelPath"] = modelPath,
        ["Kestrel:Endpoints:Grpc:Url"] = $"http://127.0.0.1:{port}",
        ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
        ["Logging:LogLevel:Default"] = "Warning",
    });

    /// <summary>Polls until the call succeeds or the time is up (then fails with <paramref name="process"/>'s output); fails at once if it exits.</summary>
    private static async Task WaitUntilAsync(Func<Task> call, string what, HostProcess process, int seconds = 90)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await call();
                return;
            }
            catch (RpcException e) when (clock.Elapsed.TotalSeconds >= seconds || process.HasExited)
            {
                throw new TimeoutException($"{what} did not come up in {seconds} s ({e.Status.Detail}); {process.Name}'s output:\n{process.Output}");
            }
            catch (RpcException)
            {
                await Task.Delay(200);
            }
        }
    }

    private static async Task<Job> Final(AsyncServerStreamingCall<JobEvent> call)
    {
        Job? final = null;
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            final = e.Finished ?? final;
        return final!;
    }

    [Fact]
    public async Task Killing_the_model_service_fails_the_stream_and_the_job_as_unavailable_and_the_gateway_recovers_when_it_returns()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        int port = Ports.Free();
        string model = RepoPaths.Models("stories260K/stories260K.bin");
        var service = StartModelService(model, port);
        WebApplication? gateway = null;
        try
        {
            await service.WaitHealthyAsync($"http://127.0.0.1:{port}", StartTimeout);
            (gateway, var address) = await Mesh.StartGatewayAsync([$"http://127.0.0.1:{port}"], plugins, TempDir());
            using var channel = Mesh.Channel(address);
            var models = new Contracts.V1.ModelService.ModelServiceClient(channel);
            var analyses = new AnalysisService.AnalysisServiceClient(channel);

            // A job calling the model in a loop, and a Run streaming ~50 MB of captures (far more than
            // the HTTP/2 windows buffer): both in flight when the service dies.
            var job = await analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "chatty", ParametersJson = """{"steps": 10000}""" }, Mesh.As(Mesh.AliceKey));
            while ((await analyses.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey))).Progress <= 0)
                await Task.Delay(20);
            var run = new RunRequest { Captures = { new Capture { Hooks = { "blocks.*.hook_resid_*" } } } };
            for (int i = 0; i < 64; i++)
                run.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { Enumerable.Range(1, 200).Select(t => (t * 7 + i) % 500 + 1) } } });
            using var stream = models.Run(run, Mesh.As(Mesh.AliceKey));
            Assert.True(await stream.ResponseStream.MoveNext());

            service.Kill();

            var error = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                while (await stream.ResponseStream.MoveNext())
                {
                }
            });
            Assert.Equal(StatusCode.Unavailable, error.StatusCode);
            Job failed;
            while ((failed = await analyses.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey))).State == JobState.Running)
                await Task.Delay(50);
            Assert.Equal(JobState.Failed, failed.State);
            Assert.Equal("UNAVAILABLE", failed.ErrorCode);
            Assert.Contains("a model call failed", failed.Error, StringComparison.Ordinal);

            // The gateway itself stays healthy: its own services answer; model calls fail fast and say why.
            Assert.Contains((await analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey))).Plugins, p => p.Id == "chatty");
            var down = await Assert.ThrowsAsync<RpcException>(() => models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey)).ResponseAsync);
            Assert.Equal(StatusCode.Unavailable, down.StatusCode);
            Assert.Contains($"127.0.0.1:{port}", down.Status.Detail, StringComparison.Ordinal);

            // The service comes back (as Kubernetes restarts it): the gateway routes to it again, and jobs succeed.
            await service.DisposeAsync();
            service = StartModelService(model, port);
            await WaitUntilAsync(async () => await models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey)), "the model service behind the gateway", service);
            var again = await Final(analyses.RunAnalysis(new AnalysisRequest { Plugin = "chatty", ParametersJson = """{"steps": 3}""" }, Mesh.As(Mesh.AliceKey)));
            Assert.True(again.State == JobState.Succeeded, again.Error);
        }
        finally
        {
            if (gateway is not null)
            {
                await gateway.StopAsync();
                await gateway.DisposeAsync();
            }
            await service.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_plugin_allocating_without_bound_fails_its_job_as_resource_exhausted_and_the_worker_keeps_serving()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        int port = Ports.Free(), workerPort = Ports.Free();
        string data = TempDir();
        await using var front = HostProcess.Start("gateway", "InterpMesh.Gateway", new Dictionary<string, string?>
        {
            ["Gateway:Models:none:Endpoints:0"] = "http://127.0.0.1:1",
            ["Gateway:ArtifactsPath"] = Path.Combine(data, "artifacts"),
            ["Gateway:JobsPath"] = Path.Combine(data, "jobs"),
            ["Gateway:Auth:Enabled"] = "true",
            ["Gateway:Auth:Keys:0:Name"] = "alice",
            ["Gateway:Auth:Keys:0:Sha256"] = Mesh.Hash(Mesh.AliceKey),
            ["Gateway:Auth:Keys:0:Roles:0"] = "analyze",
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://127.0.0.1:{port}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        });
        // The plugins run in the worker: as in a container with a memory limit, the runtime caps its managed heap (here 384 MiB).
        await using var worker = HostProcess.Start("worker", "InterpMesh.AnalysisWorker", new Dictionary<string, string?>
        {
            ["Worker:Models:none:Endpoints:0"] = "http://127.0.0.1:1",
            ["Worker:PluginsPath"] = plugins,
            ["Worker:ArtifactsPath"] = Path.Combine(data, "artifacts"),
            ["Worker:JobsPath"] = Path.Combine(data, "jobs"),
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://127.0.0.1:{workerPort}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        }, new Dictionary<string, string> { ["DOTNET_GCHeapHardLimit"] = (384L << 20).ToString("X", CultureInfo.InvariantCulture) });
        using var channel = Mesh.Channel($"http://127.0.0.1:{port}");
        var analyses = new AnalysisService.AnalysisServiceClient(channel);
        await front.WaitHealthyAsync($"http://127.0.0.1:{port}", StartTimeout);
        await WaitUntilAsync(async () =>
        {
            var listed = await analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.AliceKey));
            if (!listed.Plugins.Any(p => p.Id == "hoards" && p.Loaded))
                throw new RpcException(new Status(StatusCode.Unavailable, "the worker has not published its plugins yet"));
        }, "the worker's plugins behind the gateway", worker);

        var hoard = await Final(analyses.RunAnalysis(new AnalysisRequest { Plugin = "hoards" }, Mesh.As(Mesh.AliceKey)));
        Assert.Equal(JobState.Failed, hoard.State);
        Assert.Equal("RESOURCE_EXHAUSTED", hoard.ErrorCode);
        Assert.Contains("ran out of memory", hoard.Error, StringComparison.Ordinal);

        // Still serving, with the memory back: another hoarder is contained the same way, and a normal job runs.
        Assert.False(worker.HasExited, worker.Output);
        var second = await Final(analyses.RunAnalysis(new AnalysisRequest { Plugin = "hoards" }, Mesh.As(Mesh.AliceKey)));
        Assert.Equal("RESOURCE_EXHAUSTED", second.ErrorCode);
        var slow = await Final(analyses.RunAnalysis(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 2}""" }, Mesh.As(Mesh.AliceKey)));
        Assert.True(slow.State == JobState.Succeeded, slow.Error);
        Assert.False(worker.HasExited, worker.Output);
    }

    [Fact]
    public async Task Finished_jobs_beyond_the_retention_limit_are_deleted_from_the_job_store_and_stay_deleted_after_a_restart()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempDir();
        var settings = new Dictionary<string, string?> { ["Gateway:MaxRetainedJobs"] = "2" };
        var (gateway, address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, settings);
        var ids = new List<string>();
        try
        {
            using var channel = Mesh.Channel(address);
            var analyses = new AnalysisService.AnalysisServiceClient(channel);
            for (int i = 0; i < 3; i++)
                ids.Add((await Final(analyses.RunAnalysis(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey)))).Id);
            // Retention runs once a job's record is saved, just after its final event reached the
            // caller: give it a moment (under load the caller can be quicker than the prune).
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (DateTime.UtcNow < deadline)
            {
                try
                {
                    await analyses.GetJobAsync(new GetJobRequest { Id = ids[0] }, Mesh.As(Mesh.AliceKey));
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
                {
                    break;
                }
                await Task.Delay(20);
            }
            var gone = await Assert.ThrowsAsync<RpcException>(() => analyses.GetJobAsync(new GetJobRequest { Id = ids[0] }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.NotFound, gone.StatusCode);
            Assert.Equal(JobState.Succeeded, (await analyses.GetJobAsync(new GetJobRequest { Id = ids[2] }, Mesh.As(Mesh.AliceKey))).State);
            // Deleted from the job store (the embedded file in the jobs folder), not just hidden.
            var store = gateway.Services.GetRequiredService<InterpMesh.Jobs.IJobStore>();
            var kept = await store.ListAsync(new InterpMesh.Jobs.JobListQuery(new InterpMesh.Jobs.JobCaller("test", IsAdmin: true)));
            Assert.Equal(2, kept.Jobs.Count);
            Assert.True(File.Exists(Path.Combine(data, "jobs", "jobs.db")));
        }
        finally
        {
            await gateway.StopAsync();
            await gateway.DisposeAsync();
        }
        (gateway, address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, settings);
        try
        {
            using var channel = Mesh.Channel(address);
            var listed = await new AnalysisService.AnalysisServiceClient(channel).ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.AdminKey));
            Assert.Equal(ids.Skip(1).Order(), listed.Jobs.Select(j => j.Id).Order());
        }
        finally
        {
            await gateway.StopAsync();
            await gateway.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_job_whose_model_calls_meet_a_busy_model_service_waits_as_told_and_succeeds()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        // The model service runs one request at a time and refuses the rest at once with grpc-retry-pushback-ms.
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"), new() { ["ModelService:MaxConcurrentRequests"] = "1", ["ModelService:AdmissionWaitMs"] = "0" });
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, TempDir());
        try
        {
            using var channel = Mesh.Channel(address);
            var analyses = new AnalysisService.AnalysisServiceClient(channel);
            // The flood handles its refusals itself (no retry policy), so the test can count them.
            using var direct = Mesh.Channel(serviceAddress, InterpMesh.Client.ChannelRetry.None);
            var models = new Contracts.V1.ModelService.ModelServiceClient(direct);
            using var stop = new CancellationTokenSource();
            int refused = 0;
            // Three well-behaved clients (they wait as told) keep the only slot busy with generations.
            var flood = Enumerable.Range(0, 3).Select(_ => Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        using var call = models.Generate(new GenerateRequest { Prompts = { new Input { Text = "Once upon a time" } }, MaxNewTokens = 20, NoDefaultStop = true });
                        await foreach (var _ in call.ResponseStream.ReadAllAsync())
                        {
                        }
                        await Task.Delay(20);                                   // a user's think time
                    }
                    catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
                    {
                        Interlocked.Increment(ref refused);
                        await Task.Delay(int.Parse(e.Trailers.GetValue(Contracts.RetryPushback.Trailer)!, CultureInfo.InvariantCulture));
                    }
                }
            })).ToArray();
            var jobs = await Task.WhenAll(Enumerable.Range(0, 2).Select(_ =>
                Final(analyses.RunAnalysis(new AnalysisRequest { Plugin = "chatty", ParametersJson = """{"steps": 6}""" }, Mesh.As(Mesh.AliceKey)))));
            await stop.CancelAsync();
            await Task.WhenAll(flood);
            Assert.True(refused > 0, "the model service was never busy; the test proves nothing");
            Assert.All(jobs, j => Assert.True(j.State == JobState.Succeeded, $"{j.ErrorCode}: {j.Error}"));
        }
        finally
        {
            await gateway.StopAsync();
            await gateway.DisposeAsync();
            await service.StopAsync();
            await service.DisposeAsync();
        }
    }
}
