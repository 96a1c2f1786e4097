using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Jobs in the shared job store: two gateway replicas on one store (here the embedded file both are
/// pointed at; PostgreSQL runs the same code and the same store suite in Jobs.Tests), each with an
/// analysis worker beside it. Any replica serves any job; quotas hold over both; ownership; ListJobs paging.
/// </summary>
[Collection("gateways")]
public sealed class SharedJobsTests : IAsyncLifetime
{
    private readonly string data = TempFolders.Create("interpmesh-gw-shared-");
    private string plugins = "";
    private WebApplication? a, b;
    private Grpc.Net.Client.GrpcChannel? channelA, channelB;

    private AnalysisService.AnalysisServiceClient A => new(channelA!);
    private AnalysisService.AnalysisServiceClient B => new(channelB!);

    public async Task InitializeAsync()
    {
        plugins = await TestPlugins.PluginsFolderAsync();
        // A short lease, so a cancel through the replica whose worker does not run the job arrives within a second.
        var settings = new Dictionary<string, string?> { ["Worker:Jobs:LeaseSeconds"] = "3", ["Gateway:RateLimit:MaxJobsPerKey"] = "3" };
        (a, var addressA) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, settings);
        (b, var addressB) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, settings);
        channelA = Mesh.Channel(addressA, InterpMesh.Client.ChannelRetry.None);
        channelB = Mesh.Channel(addressB, InterpMesh.Client.ChannelRetry.None);
    }

    public async Task DisposeAsync()
    {
        channelA?.Dispose();
        channelB?.Dispose();
        await Mesh.StopAsync(a, b);
        TempFolders.Delete(plugins, data);
    }

    private static async Task<(List<JobEvent> Events, Job Final)> Drain(AsyncServerStreamingCall<JobEvent> call)
    {
        var events = new List<JobEvent>();
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            events.Add(e);
        return (events, events.Last().Finished);
    }

    internal static async Task<Job> WaitUntil(AnalysisService.AnalysisServiceClient client, string id, Func<Job, bool> done, string key = Mesh.AliceKey, int seconds = 60)
    {
        for (var deadline = DateTime.UtcNow.AddSeconds(seconds); DateTime.UtcNow < deadline; await Task.Delay(50))
        {
            var job = await client.GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(key));
            if (done(job))
                return job;
        }
        throw new TimeoutException($"job {id} never got there");
    }

    [Fact]
    public async Task A_watch_cut_off_by_its_gateway_stopping_continues_through_the_other_and_the_job_ends_unaffected()
    {
        var job = await B.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 8}""" }, Mesh.As(Mesh.AliceKey));
        using (var watch = A.WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey)))
        {
            // Follow it through A until the plugin has made progress, then take A away (a rollout or a
            // scale-down; whichever replica's worker ran the job hands it back or keeps it).
            while (await watch.ResponseStream.MoveNext())
            {
                if (watch.ResponseStream.Current.Progress?.Message.StartsWith("step ", StringComparison.Ordinal) == true)
                    break;
            }
            var stopping = a!.StopAsync();
            try
            {
                while (await watch.ResponseStream.MoveNext())
                {
                }
            }
            catch (RpcException)
            {
                // The stream ends with the replica; the client moves on to another.
            }
            await stopping;
            await a.DisposeAsync();
            a = null;
        }
        var (_, final) = await Drain(B.WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey)));
        Assert.True(final.State == JobState.Succeeded, $"{final.State}: {final.Error}");
        Assert.Equal("{\"steps\":8}", final.Result.SummaryJson);
        Assert.Equal("", final.Error);
    }

    [Fact]
    public async Task A_job_submitted_through_one_gateway_is_watched_to_the_end_through_another_and_listed_by_both()
    {
        var job = await A.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 8}""" }, Mesh.As(Mesh.AliceKey));
        var (events, final) = await Drain(B.WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey)));
        Assert.True(final.State == JobState.Succeeded, final.Error);
        Assert.Equal("{\"steps\":8}", final.Result.SummaryJson);
        Assert.Equal((1, "alice"), (final.Attempts, final.Owner));
        // Every step's progress reached the other replica's watcher, in order, before the final record.
        var steps = events.Where(e => e.Progress?.Message.StartsWith("step ", StringComparison.Ordinal) == true).Select(e => e.Progress.Message).ToList();
        Assert.Equal("step 8/8", steps[^1]);
        var numbers = steps.Select(m => int.Parse(m[5..m.IndexOf('/', StringComparison.Ordinal)], System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(numbers.Order(), numbers);
        Assert.NotNull(events[^1].Finished);

        foreach (var client in new[] { A, B })
        {
            var listed = await client.ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.AliceKey));
            Assert.Contains(listed.Jobs, j => j.Id == job.Id && j.State == JobState.Succeeded && j.Result is null);
            Assert.Equal("{\"steps\":8}", (await client.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey))).Result.SummaryJson);
        }
    }

    [Fact]
    public async Task A_job_cancelled_through_either_gateway_stops_wherever_it_runs()
    {
        foreach (var via in new[] { A, B })
        {
            var job = await A.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
            await WaitUntil(via, job.Id, j => j.State == JobState.Running);
            var started = DateTime.UtcNow;
            await via.CancelJobAsync(new CancelJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey));
            var final = await WaitUntil(via, job.Id, j => j.State != JobState.Running);
            Assert.Equal((JobState.Cancelled, "CANCELLED"), (final.State, final.ErrorCode));
            Assert.Contains("cancelled by alice", final.Error, StringComparison.Ordinal);
            // At once in the worker's own process, else by its next heartbeat (every second here).
            Assert.InRange(DateTime.UtcNow - started, TimeSpan.Zero, TimeSpan.FromSeconds(20));
        }
    }

    [Fact]
    public async Task A_key_s_job_quota_holds_over_both_gateways()
    {
        var running = new List<string>();
        for (int i = 0; i < 3; i++)
            running.Add((await (i % 2 == 0 ? A : B).SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey))).Id);
        foreach (var client in new[] { A, B })
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
            Assert.Contains("already has 3 jobs queued or running (limit 3)", refused.Status.Detail, StringComparison.Ordinal);
            // Only the key can free its quota: not worth a transparent retry.
            Assert.Equal("-1", refused.Trailers.GetValue(Contracts.RetryPushback.Trailer));
        }
        foreach (var id in running)
            await B.CancelJobAsync(new CancelJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
        foreach (var id in running)
            await WaitUntil(A, id, j => j.State == JobState.Cancelled);
        var next = await A.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(JobState.Succeeded, (await WaitUntil(B, next.Id, j => j.State == JobState.Succeeded)).State);
    }

    [Fact]
    public async Task Jobs_belong_to_their_key_and_only_admins_see_every_key_s()
    {
        var job = await A.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
        var read = await Assert.ThrowsAsync<RpcException>(() => B.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, read.StatusCode);
        Assert.Contains("alice", read.Status.Detail, StringComparison.Ordinal);
        var watch = await Assert.ThrowsAsync<RpcException>(() => Drain(B.WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.ReaderKey))));
        Assert.Equal(StatusCode.PermissionDenied, watch.StatusCode);
        var theirs = await B.ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.ReaderKey));
        Assert.DoesNotContain(theirs.Jobs, j => j.Id == job.Id);
        Assert.All(theirs.Jobs, j => Assert.Equal("reader", j.Owner));

        var all = await B.ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.AdminKey));
        Assert.Contains(all.Jobs, j => j.Id == job.Id);
        Assert.Equal("alice", (await A.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AdminKey))).Owner);
        var cancelled = await B.CancelJobAsync(new CancelJobRequest { Id = job.Id }, Mesh.As(Mesh.AdminKey));
        Assert.Equal(job.Id, cancelled.Id);
        var final = await WaitUntil(A, job.Id, j => j.State is JobState.Cancelled);
        Assert.Contains("cancelled by admin", final.Error, StringComparison.Ordinal);

        var missing = await Assert.ThrowsAsync<RpcException>(() => A.GetJobAsync(new GetJobRequest { Id = "job-0000000000000000" }, Mesh.As(Mesh.AdminKey)).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
    }

    [Fact]
    public async Task A_ListJobs_page_of_large_records_holds_fewer_jobs_and_stays_under_four_MiB()
    {
        // 14 records with parameters at the 256 KiB limit: 3.5 MiB, over the 3 MiB list budget in one page.
        string parameters = "{\"pad\":\"" + new string('x', (256 << 10) - 10) + "\"}";
        var ids = new List<string>();
        for (int i = 0; i < 14; i++)
        {
            var job = await A.SubmitJobAsync(new AnalysisRequest { Plugin = "throws", ParametersJson = parameters }, Mesh.As(Mesh.AliceKey));
            ids.Add(job.Id);
            await WaitUntil(A, job.Id, j => j.State == JobState.Failed);
        }
        var first = await B.ListJobsAsync(new ListJobsRequest { PageSize = 50 }, Mesh.As(Mesh.AliceKey));
        Assert.InRange(first.Jobs.Count, 1, 13);
        Assert.True(first.CalculateSize() <= 3 << 20, $"a page of {first.CalculateSize()} bytes");
        Assert.NotEqual("", first.NextPageToken);
        var rest = await B.ListJobsAsync(new ListJobsRequest { PageSize = 50, PageToken = first.NextPageToken }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(Enumerable.Reverse(ids), first.Jobs.Concat(rest.Jobs).Select(j => j.Id));
        Assert.Equal("", rest.NextPageToken);
    }

    [Fact]
    public async Task ListJobs_pages_newest_first_and_refuses_a_bad_page_size_or_token()
    {
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            var job = await (i % 2 == 0 ? A : B).SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey));
            ids.Add(job.Id);
            await WaitUntil(A, job.Id, j => j.State == JobState.Succeeded);
        }
        var first = await A.ListJobsAsync(new ListJobsRequest { PageSize = 2 }, Mesh.As(Mesh.AliceKey));
        Assert.Equal([ids[2], ids[1]], first.Jobs.Select(j => j.Id));
        Assert.NotEqual("", first.NextPageToken);
        // The token is the store's, so the other replica continues the listing.
        var second = await B.ListJobsAsync(new ListJobsRequest { PageSize = 2, PageToken = first.NextPageToken }, Mesh.As(Mesh.AliceKey));
        Assert.Equal([ids[0]], second.Jobs.Select(j => j.Id));
        Assert.Equal("", second.NextPageToken);
        // The old `limit` still caps an unpaged request.
        Assert.Single((await A.ListJobsAsync(new ListJobsRequest { Limit = 1 }, Mesh.As(Mesh.AliceKey))).Jobs);

        var badToken = await Assert.ThrowsAsync<RpcException>(() => A.ListJobsAsync(new ListJobsRequest { PageToken = "not-a-token" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, badToken.StatusCode);
        Assert.Contains("page_token", badToken.Status.Detail, StringComparison.Ordinal);
        var badSize = await Assert.ThrowsAsync<RpcException>(() => A.ListJobsAsync(new ListJobsRequest { PageSize = 501 }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, badSize.StatusCode);
        Assert.Contains("page_size must be between 0", badSize.Status.Detail, StringComparison.Ordinal);
        var badLimit = await Assert.ThrowsAsync<RpcException>(() => A.ListJobsAsync(new ListJobsRequest { Limit = -1 }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
        Assert.Contains("limit must be 0", badLimit.Status.Detail, StringComparison.Ordinal);
    }
}

/// <summary>A gateway is a front door: it queues jobs that an analysis worker runs, even one that starts later.</summary>
[Collection("gateways")]
public sealed class FrontDoorTests
{
    /// <summary>
    /// Starts a worker on <paramref name="data"/> and stops it: its plugins stay published (for
    /// three minutes), so a gateway accepts jobs for them while no worker runs (a rolling restart).
    /// </summary>
    internal static async Task PublishThenStopAWorkerAsync(string plugins, string data, Dictionary<string, string?>? settings = null)
    {
        var worker = Mesh.WorkerSettings(["http://127.0.0.1:1"], plugins, data);
        foreach (var (key, value) in settings ?? [])
            worker[key] = value;
        await Mesh.StopAsync(await LocalHosts.StartWorkerAsync(worker));
    }

    [Fact]
    public async Task A_gateway_without_a_worker_queues_jobs_that_a_replica_with_one_runs()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-gw-frontdoor-");
        WebApplication? front = null, worker = null;
        try
        {
            await PublishThenStopAWorkerAsync(plugins, data);
            (front, var frontAddress) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, startWorker: false);
            using var channel = Mesh.Channel(frontAddress);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var job = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 2}""" }, Mesh.As(Mesh.AliceKey));
            await Task.Delay(1500);
            var waiting = await client.GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey));
            Assert.Equal((JobState.Queued, 0), (waiting.State, waiting.Attempts));

            (worker, _) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data);
            using var call = client.WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey));
            var events = new List<JobEvent>();
            await foreach (var e in call.ResponseStream.ReadAllAsync())
                events.Add(e);
            var final = events[^1].Finished;
            Assert.True(final.State == JobState.Succeeded, final.Error);
            Assert.Equal(1, final.Attempts);
            // The lease was the second gateway's worker's (the watch may start after the take, so the record says it).
            string workerId = Mesh.WorkerOf(worker).Services.GetServices<Microsoft.Extensions.Hosting.IHostedService>().OfType<InterpMesh.AnalysisWorker.Jobs.JobWorker>().Single().WorkerId;
            var stored = await worker.Services.GetRequiredService<InterpMesh.Jobs.IJobStore>().GetAsync(job.Id, new InterpMesh.Jobs.JobCaller("test", IsAdmin: true));
            Assert.Equal(workerId, stored.WorkerId);
        }
        finally
        {
            await Mesh.StopAsync(front, worker);
            TempFolders.Delete(plugins, data);
        }
    }
}

/// <summary>Fair take across keys through real gateways: one key's burst does not starve another's jobs (#20).</summary>
[Collection("gateways")]
public sealed class FairTakeTests
{
    [Fact]
    public async Task After_one_key_queues_forty_jobs_another_keys_two_start_before_the_first_keys_tenth()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-gw-fair-");
        WebApplication? front = null, worker = null;
        // Alice's limits are raised for the burst; the worker runs one job at a time, so start order is take order.
        var settings = new Dictionary<string, string?> { ["Gateway:RateLimit:MaxJobsPerKey"] = "60", ["Worker:MaxConcurrentJobs"] = "1" };
        try
        {
            // The jobs are queued through a front door while no worker runs (one published its plugins), so the whole burst waits.
            await FrontDoorTests.PublishThenStopAWorkerAsync(plugins, data);
            (front, var frontAddress) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, settings, startWorker: false);
            using var channel = Mesh.Channel(frontAddress);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var alice = new List<string>();
            for (int i = 0; i < 40; i++)
                alice.Add((await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey))).Id);
            var other = new List<string>();
            for (int i = 0; i < 2; i++)
                other.Add((await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AdminKey))).Id);

            (worker, _) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, settings);
            Task<Job> Final(string id, string key) =>
                SharedJobsTests.WaitUntil(client, id, j => j.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled, key, seconds: 120);
            var aliceJobs = new List<Job>();
            foreach (var id in alice)
                aliceJobs.Add(await Final(id, Mesh.AliceKey));
            var otherJobs = new List<Job>();
            foreach (var id in other)
                otherJobs.Add(await Final(id, Mesh.AdminKey));
            Assert.All(aliceJobs.Concat(otherJobs), j => Assert.Equal(JobState.Succeeded, j.State));
            var aliceTenth = aliceJobs.Select(j => j.Started.ToDateTime()).Order().ElementAt(9);
            foreach (var j in otherJobs)
                Assert.True(j.Started.ToDateTime() < aliceTenth, $"the other key's job {j.Id} started at {j.Started}, after alice's tenth ({aliceTenth:O})");
        }
        finally
        {
            await Mesh.StopAsync(front, worker);
            TempFolders.Delete(plugins, data);
        }
    }
}

/// <summary>A gateway whose job store cannot be opened, or whose job settings are wrong, does not start, and says why.</summary>
[Collection("gateways")]
public sealed class JobStoreConfigurationTests
{
    [Fact]
    public async Task An_unreachable_PostgreSQL_job_store_stops_the_start_naming_the_setting()
    {
        string data = TempFolders.Create("interpmesh-gw-badstore-");
        try
        {
            var e = await Assert.ThrowsAnyAsync<Exception>(() => Mesh.StartGatewayAsync(["http://127.0.0.1:1"], data, data,
                new() { ["Gateway:Jobs:ConnectionString"] = $"Host=127.0.0.1;Port={Ports.Free()};Username=nobody;Timeout=2" }));
            Assert.Contains("Gateway:Jobs:ConnectionString", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            TempFolders.Delete(data);
        }
    }

    [Fact]
    public async Task Wrong_job_settings_are_all_reported_at_start()
    {
        string data = TempFolders.Create("interpmesh-gw-badjobs-");
        try
        {
            // The gateway's own, and keys that moved to the worker, refused naming where they went.
            var e = await Assert.ThrowsAnyAsync<Exception>(() => Mesh.StartGatewayAsync(["http://127.0.0.1:1"], data, data,
                new() { ["Gateway:Jobs:LeaseSeconds"] = "1", ["Gateway:Jobs:MaxAttempts"] = "0", ["Gateway:Jobs:PollMilliseconds"] = "0" }));
            Assert.Contains("Gateway:Jobs:LeaseSeconds moved to the analysis worker's settings (Worker:Jobs:LeaseSeconds", e.Message, StringComparison.Ordinal);
            Assert.Contains("Gateway:Jobs:MaxAttempts moved to the analysis worker's settings (Worker:Jobs:MaxAttempts", e.Message, StringComparison.Ordinal);
            Assert.Contains("Gateway:Jobs:PollMilliseconds must be from 10 to 10000, got 0", e.Message, StringComparison.Ordinal);
            // The worker's, reported by the worker.
            e = await Assert.ThrowsAnyAsync<Exception>(() => Mesh.StartGatewayAsync(["http://127.0.0.1:1"], data, data,
                new() { ["Worker:Jobs:LeaseSeconds"] = "1", ["Worker:Jobs:MaxAttempts"] = "0", ["Worker:Jobs:PollMilliseconds"] = "0" }));
            Assert.Contains("Worker:Jobs:LeaseSeconds must be from 3 to 3600, got 1", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:Jobs:MaxAttempts must be at least 1", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:Jobs:PollMilliseconds must be from 10 to 10000, got 0", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            TempFolders.Delete(data);
        }
    }
}

/// <summary>The per-pod job files of gateways before the shared store are imported into it once, at start.</summary>
[Collection("gateways")]
public sealed class LegacyJobFilesTests
{
    [Fact]
    public async Task Old_job_files_are_imported_once_with_their_results_and_unfinished_ones_say_to_submit_again()
    {
        string data = TempFolders.Create("interpmesh-gw-legacy-");
        string jobs = Path.Combine(data, "jobs");
        Directory.CreateDirectory(jobs);
        var formatter = new Google.Protobuf.JsonFormatter(Google.Protobuf.JsonFormatter.Settings.Default.WithFormatDefaultValues(false));
        var created = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTime(DateTime.UtcNow.AddDays(-1));
        var done = new Job
        {
            Id = "job-00000000000000d0", Plugin = "slow", Model = "tiny", State = JobState.Succeeded, Owner = "alice", ParametersJson = """{"steps":1}""",
            Created = created, Started = created, Finished = created, Progress = 1, Message = "done",
            Result = new AnalysisResult { SummaryJson = """{"steps":1}""", Figures = { new Figure { Name = "f", MediaType = "image/png", Content = Google.Protobuf.ByteString.CopyFrom(1, 2, 3) } } },
        };
        var running = new Job { Id = "job-00000000000000e0", Plugin = "slow", Model = "tiny", State = JobState.Running, Owner = "alice", ParametersJson = "{}", Created = created, Started = created };
        File.WriteAllText(Path.Combine(jobs, done.Id + ".json"), formatter.Format(done));
        File.WriteAllText(Path.Combine(jobs, running.Id + ".json"), formatter.Format(running));
        File.WriteAllText(Path.Combine(jobs, "job-broken.json"), "{ not json");
        WebApplication? gateway = null;
        try
        {
            for (int start = 0; start < 2; start++)
            {
                (gateway, var address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], data, data);
                using var channel = Mesh.Channel(address);
                var client = new AnalysisService.AnalysisServiceClient(channel);
                var imported = await client.GetJobAsync(new GetJobRequest { Id = done.Id }, Mesh.As(Mesh.AliceKey));
                Assert.Equal((JobState.Succeeded, """{"steps":1}"""), (imported.State, imported.Result.SummaryJson));
                Assert.Equal([1, 2, 3], imported.Result.Figures.Single().Content.ToByteArray());
                // The store keeps times to the millisecond.
                Assert.Equal(created.ToDateTimeOffset().ToUnixTimeMilliseconds(), imported.Finished.ToDateTimeOffset().ToUnixTimeMilliseconds());
                var unfinished = await client.GetJobAsync(new GetJobRequest { Id = running.Id }, Mesh.As(Mesh.AliceKey));
                Assert.Equal((JobState.Failed, "UNAVAILABLE"), (unfinished.State, unfinished.ErrorCode));
                Assert.Contains("submit it again", unfinished.Error, StringComparison.Ordinal);
                // Once: a second start finds the files moved and the store unchanged; the unreadable file stays.
                Assert.Equal(2, (await client.ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.AdminKey))).Jobs.Count);
                Assert.Equal(["job-broken.json"], Directory.GetFiles(jobs, "job-*.json").Select(Path.GetFileName));
                Assert.Equal(2, Directory.GetFiles(Path.Combine(jobs, "imported"), "job-*.json").Length);
                await Mesh.StopAsync(gateway);
                gateway = null;
            }
        }
        finally
        {
            await Mesh.StopAsync(gateway);
            TempFolders.Delete(data);
        }
    }
}
