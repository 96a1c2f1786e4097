using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Gateway.Tests;

/// <summary>Limits, replicas and restarts: each test brings up the hosts it needs.</summary>
/// <remarks>
/// Same collection as <see cref="GatewayTests"/>, so never in parallel with it: disposing one
/// gateway host while another in the same process is being scraped made the survivor's
/// Prometheus output lose its series (OpenTelemetry's listeners are process-wide). One gateway per
/// process, as deployed, is not affected.
/// </remarks>
[Collection("gateways")]
public sealed class ResilienceTests
{
    private static string TempDir() => TempFolders.Create("interpmesh-gw-");

    private static async Task Stop(WebApplication app)
    {
        await app.StopAsync();
        await app.DisposeAsync();
    }

    [Fact]
    public async Task Per_key_rate_limits_and_job_quotas_answer_resource_exhausted_with_retry_info()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, TempDir(), new()
        {
            ["Gateway:RateLimit:RequestsPerSecond"] = "0.5",
            ["Gateway:RateLimit:Burst"] = "4",
            ["Gateway:RateLimit:MaxJobsPerKey"] = "1",
        });
        try
        {
            // No retry policy: the refusals themselves are under test (a client's policy would wait out the rate limit).
            using var channel = Mesh.Channel(address, InterpMesh.Client.ChannelRetry.None);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var first = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 100}""" }, Mesh.As(Mesh.AliceKey));
            var quota = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, quota.StatusCode);
            Assert.Contains("already has 1 jobs queued or running (limit 1)", quota.Status.Detail, StringComparison.Ordinal);
            // The key's own quota frees only when its job ends: "do not retry".
            Assert.Equal("-1", quota.Trailers.GetValue(Contracts.RetryPushback.Trailer));
            // The burst of 4 is spent (2 calls so far); the 5th call of the key is refused, another key is not.
            await client.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.AliceKey));
            await client.CancelJobAsync(new CancelJobRequest { Id = first.Id }, Mesh.As(Mesh.AliceKey));
            var limited = await Assert.ThrowsAsync<RpcException>(() => client.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, limited.StatusCode);
            Assert.Contains("over its rate limit", limited.Status.Detail, StringComparison.Ordinal);
            // The wait until the key's next token: more than nothing, at most one refill period (2 s at 0.5/s).
            long wait = long.Parse(limited.Trailers.GetValue(Contracts.RetryPushback.Trailer)!, System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(wait, 1, 2000);
            // A forwarded ModelService call of the key is refused the same way, the pushback passed on.
            var forwarded = await Assert.ThrowsAsync<RpcException>(() => new Contracts.V1.ModelService.ModelServiceClient(channel).GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, forwarded.StatusCode);
            Assert.InRange(long.Parse(forwarded.Trailers.GetValue(Contracts.RetryPushback.Trailer)!, System.Globalization.CultureInfo.InvariantCulture), 1, 2000);
            await client.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
        }
        finally
        {
            await Stop(gateway);
            await Stop(service);
        }
    }

    [Fact]
    public async Task A_full_job_queue_answers_resource_exhausted_with_a_ten_second_pushback()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-gw-queue-");
        var (gateway, address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, new()
        {
            ["Worker:MaxConcurrentJobs"] = "1",
            ["Gateway:MaxQueuedJobs"] = "1",
        });
        try
        {
            using var channel = Mesh.Channel(address, InterpMesh.Client.ChannelRetry.None);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var running = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
            while ((await client.GetJobAsync(new GetJobRequest { Id = running.Id }, Mesh.As(Mesh.AliceKey))).State != JobState.Running)
                await Task.Delay(50);
            var queued = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
            var full = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, full.StatusCode);
            Assert.Contains("the job queue is full (1 waiting)", full.Status.Detail, StringComparison.Ordinal);
            // The shared queue drains as jobs start: worth retrying, after the wait it asks for.
            Assert.Equal("10000", full.Trailers.GetValue(Contracts.RetryPushback.Trailer));
            await client.CancelJobAsync(new CancelJobRequest { Id = queued.Id }, Mesh.As(Mesh.AliceKey));
            await client.CancelJobAsync(new CancelJobRequest { Id = running.Id }, Mesh.As(Mesh.AliceKey));
        }
        finally
        {
            await Stop(gateway);
            TempFolders.Delete(data);
        }
    }

    [Fact]
    public async Task Calls_spread_over_replicas_and_losing_one_mid_stream_fails_only_that_call()
    {
        // Two copies of the model, so each replica's ModelInfo.source says which one answered.
        var dirs = new[] { TempDir(), TempDir() };
        var services = new List<(WebApplication App, string Address)>();
        foreach (var d in dirs)
        {
            Directory.CreateDirectory(d);
            File.Copy(RepoPaths.Models("stories260K/stories260K.bin"), Path.Combine(d, "stories260K.bin"));
            File.Copy(RepoPaths.Models("stories260K/tok512.bin"), Path.Combine(d, "tok512.bin"));
            services.Add(await Mesh.StartModelServiceAsync(Path.Combine(d, "stories260K.bin")));
        }
        var (gateway, address) = await Mesh.StartGatewayAsync(services.Select(s => s.Address), TempDir(), TempDir());
        var stopped = new List<WebApplication>();
        try
        {
            using var channel = Mesh.Channel(address);
            var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
            var sources = new HashSet<string>();
            for (int i = 0; i < 6; i++)
                sources.Add((await client.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey))).Source);
            Assert.Equal(2, sources.Count);

            // A long generation streaming per-step captures; find the replica serving it and stop it.
            var request = new GenerateRequest { Prompts = { new Input { Text = "Once upon a time" } }, MaxNewTokens = 200, NoDefaultStop = true, Captures = { new Capture { Hooks = { "blocks.*" } } } };
            using var call = client.Generate(request, Mesh.As(Mesh.AliceKey));
            Assert.True(await call.ResponseStream.MoveNext());
            var busy = services.Single(s => s.App.Services.GetRequiredService<ModelHost>().Engine!.Admitted > 0);
            using (var now = new CancellationTokenSource())
            {
                await now.CancelAsync();
                var stopping = busy.App.StopAsync(now.Token);
                var error = await Assert.ThrowsAsync<RpcException>(async () =>
                {
                    while (await call.ResponseStream.MoveNext())
                    {
                    }
                });
                Assert.Equal(StatusCode.Unavailable, error.StatusCode);
                Assert.Contains("unavailable", error.Status.Detail, StringComparison.Ordinal);
                await stopping;
            }
            stopped.Add(busy.App);
            var survivor = services.Single(s => s.App != busy.App);
            for (int i = 0; i < 4; i++)
            {
                var info = await client.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey));
                Assert.StartsWith(Path.GetDirectoryName(survivor.App.Services.GetRequiredService<ModelHost>().Options.ModelPath)!, info.Source, StringComparison.Ordinal);
            }
            using var run = client.Run(new RunRequest { Inputs = { new Input { Text = "Hello" } } }, Mesh.As(Mesh.AliceKey));
            Assert.True(await run.ResponseStream.MoveNext());
        }
        finally
        {
            await Stop(gateway);
            foreach (var s in services)
            {
                if (!stopped.Contains(s.App))
                    await Stop(s.App);
                else
                    await s.App.DisposeAsync();
            }
        }
    }

    [Fact]
    public async Task After_a_gateway_restart_finished_jobs_keep_their_results_and_running_ones_run_again()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempDir();
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        string done, running;
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, data);
        try
        {
            using (var channel = Mesh.Channel(address))
            {
                var client = new AnalysisService.AnalysisServiceClient(channel);
                using var call = client.RunAnalysis(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey));
                Job? final = null;
                await foreach (var e in call.ResponseStream.ReadAllAsync())
                    final = e.Finished ?? final;
                done = final!.Id;
                var job = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
                running = job.Id;
                while ((await client.GetJobAsync(new GetJobRequest { Id = running }, Mesh.As(Mesh.AliceKey))).State != JobState.Running)
                    await Task.Delay(50);
            }
            await Stop(gateway);
            (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, data);
            using var again = Mesh.Channel(address);
            var after = new AnalysisService.AnalysisServiceClient(again);
            var finished = await after.GetJobAsync(new GetJobRequest { Id = done }, Mesh.As(Mesh.AliceKey));
            Assert.Equal(JobState.Succeeded, finished.State);
            Assert.Equal("{\"steps\":1}", finished.Result.SummaryJson);
            // The stopping worker handed the running job back to the queue (not counted as an
            // attempt): the restarted gateway's worker runs it again; nothing is lost.
            Job rerun;
            var deadline = DateTime.UtcNow.AddSeconds(60);
            do
            {
                rerun = await after.GetJobAsync(new GetJobRequest { Id = running }, Mesh.As(Mesh.AliceKey));
                await Task.Delay(50);
            }
            while (rerun.State != JobState.Running && DateTime.UtcNow < deadline);
            Assert.Equal((JobState.Running, 1), (rerun.State, rerun.Attempts));
            Assert.Equal("", rerun.Error);
            await after.CancelJobAsync(new CancelJobRequest { Id = running }, Mesh.As(Mesh.AliceKey));
        }
        finally
        {
            await Stop(gateway);
            await Stop(service);
        }
    }
}
