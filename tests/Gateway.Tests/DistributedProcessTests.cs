using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Jobs;
using JobState = InterpMesh.Contracts.V1.JobState;
using StoredState = InterpMesh.Jobs.JobState;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// A deployment of issue #20 on loopback, every host its own OS process: one PostgreSQL database
/// (a throwaway cluster) holding the jobs, one model service (the "concepts" toy model), two
/// gateways and two analysis workers on that database, one artifacts folder shared by all (the
/// volume), auth on with Mesh's admin, alice and reader keys. Leases are short (3 s) so a killed
/// worker's job comes back quickly, and the per-key limits are raised so twenty jobs can be in
/// flight at once. Tests kill (SIGKILL) or stop (SIGTERM) processes and start replacements;
/// <see cref="EnsureTwoOfEachAsync"/> puts the fixture back to two gateways and two workers, so
/// the tests do not depend on their order.
/// </summary>
public sealed class DistributedMesh : IAsyncLifetime
{
    /// <summary>How long a host may take to serve (CI is loaded: two cores, many test assemblies).</summary>
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(120);

    /// <summary>How long a host may take to stop after SIGTERM (the hosts' own drain is 30 s).</summary>
    public static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(60);

    public const int LeaseSeconds = 3;

    private const int OutputLinesInFailures = 80;

    private readonly PostgresCluster cluster = new();
    private readonly List<Host> gateways = [];
    private readonly List<Host> workers = [];
    private readonly List<Host> gone = [];
    private readonly object sync = new();
    private int gatewayCount;
    private int workerCount;

    /// <summary>A started host: its process and the gRPC address it serves.</summary>
    public sealed record Host(HostProcess Process, string Address)
    {
        public string Name => Process.Name;
    }

    public string ConnectionString { get; private set; } = "";
    public string DataPath { get; } = TempFolders.Create("interpmesh-dist-data-");
    public string PluginsPath { get; private set; } = "";
    public Host ModelService { get; private set; } = null!;

    /// <summary>The store as the hosts see it, for what the API does not show (the worker holding a lease, a job's whole event history).</summary>
    public SqlJobStore Store { get; private set; } = null!;

    /// <summary>The gateways now running, oldest first.</summary>
    public IReadOnlyList<Host> Gateways
    {
        get
        {
            lock (sync)
                return [.. gateways];
        }
    }

    /// <summary>The workers now running, oldest first.</summary>
    public IReadOnlyList<Host> Workers
    {
        get
        {
            lock (sync)
                return [.. workers];
        }
    }

    public async Task InitializeAsync()
    {
        await cluster.InitializeAsync();
        ConnectionString = await cluster.CreateDatabaseAsync();
        PluginsPath = await TestPlugins.PluginsFolderAsync();
        // The built-in SAE plugin, as its build laid it out (the test project builds it).
        string sae = Path.Combine(RepoPaths.Root, "plugins", "sae");
        if (!File.Exists(Path.Combine(sae, "plugin.json")))
            throw new InvalidOperationException($"the SAE plugin is not laid out in {sae}; build tests/Gateway.Tests (it builds src/Plugins/SAE)");
        TestPlugins.Copy(sae, Path.Combine(PluginsPath, "sae"));

        int modelPort = Ports.Free();
        var model = HostProcess.Start("model service", "InterpMesh.ModelService", new Dictionary<string, string?>
        {
            ["ModelService:ModelPath"] = RepoPaths.Models("concepts"),
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://127.0.0.1:{modelPort}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        });
        ModelService = new Host(model, $"http://127.0.0.1:{modelPort}");
        // The hosts start together (they migrate the one database under its schema lock), as a deployment's pods do.
        await Task.WhenAll(
            model.WaitHealthyAsync(ModelService.Address, StartTimeout),
            StartGatewayAsync(), StartGatewayAsync(), StartWorkerAsync(), StartWorkerAsync());
        Store = await JobStores.OpenAsync(ConnectionString, "");
        // Submissions are checked against the plugins the workers published.
        await WhenPluginsPublishedAsync(Gateways[0]);
    }

    public async Task DisposeAsync()
    {
        foreach (var host in Gateways.Concat(Workers).Append(ModelService).Concat(gone))
        {
            if (host is not null)
                await host.Process.DisposeAsync();
        }
        if (Store is not null)
            await Store.DisposeAsync();
        await cluster.DisposeAsync();
        TempFolders.Delete(PluginsPath, DataPath);
    }

    /// <summary>Starts a gateway on a new port and waits until it serves; it joins <see cref="Gateways"/>.</summary>
    public async Task<Host> StartGatewayAsync()
    {
        string name = $"gateway {(char)('A' + Interlocked.Increment(ref gatewayCount) - 1)}";
        int port = Ports.Free();
        var settings = new Dictionary<string, string?>
        {
            ["Gateway:Models:tiny:Endpoints:0"] = ModelService.Address,
            ["Gateway:ArtifactsPath"] = Path.Combine(DataPath, "artifacts"),
            ["Gateway:JobsPath"] = Path.Combine(DataPath, "unused-jobs-" + name[^1..]),
            ["Gateway:Jobs:ConnectionString"] = ConnectionString,
            ["Gateway:Auth:Enabled"] = "true",
            ["Gateway:Auth:Keys:0:Name"] = "admin",
            ["Gateway:Auth:Keys:0:Sha256"] = Mesh.Hash(Mesh.AdminKey),
            ["Gateway:Auth:Keys:0:Roles:0"] = "admin",
            ["Gateway:Auth:Keys:1:Name"] = "alice",
            ["Gateway:Auth:Keys:1:Sha256"] = Mesh.Hash(Mesh.AliceKey),
            ["Gateway:Auth:Keys:1:Roles:0"] = "analyze",
            ["Gateway:Auth:Keys:2:Name"] = "reader",
            ["Gateway:Auth:Keys:2:Sha256"] = Mesh.Hash(Mesh.ReaderKey),
            ["Gateway:Auth:Keys:2:Roles:0"] = "read",
            ["Gateway:RateLimit:RequestsPerSecond"] = "1000",
            ["Gateway:RateLimit:Burst"] = "1000",
            // Twenty jobs of one key in flight (the rolling restart).
            ["Gateway:RateLimit:MaxJobsPerKey"] = "32",
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://127.0.0.1:{port}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        };
        var host = new Host(HostProcess.Start(name, "InterpMesh.Gateway", settings), $"http://127.0.0.1:{port}");
        lock (sync)
            gateways.Add(host);
        await host.Process.WaitHealthyAsync(host.Address, StartTimeout);
        return host;
    }

    /// <summary>Starts a worker and waits until it serves (its plugins are published by then); it joins <see cref="Workers"/>.</summary>
    public async Task<Host> StartWorkerAsync()
    {
        string name = $"worker {Interlocked.Increment(ref workerCount)}";
        int port = Ports.Free();
        var settings = new Dictionary<string, string?>
        {
            ["Worker:Models:tiny:Endpoints:0"] = ModelService.Address,
            ["Worker:DefaultModel"] = "tiny",
            ["Worker:PluginsPath"] = PluginsPath,
            ["Worker:ArtifactsPath"] = Path.Combine(DataPath, "artifacts"),
            ["Worker:JobsPath"] = Path.Combine(DataPath, "unused-jobs-" + name[^1..]),
            ["Worker:Jobs:ConnectionString"] = ConnectionString,
            ["Worker:Jobs:LeaseSeconds"] = LeaseSeconds.ToString(CultureInfo.InvariantCulture),
            ["Worker:Jobs:MaxRunningPerKey"] = "16",
            ["Kestrel:Endpoints:Grpc:Url"] = $"http://127.0.0.1:{port}",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            // Information: the worker's hand-backs and lost leases are in its output for failure messages.
            ["Logging:LogLevel:Default"] = "Information",
            ["Logging:LogLevel:Microsoft"] = "Warning",
            ["Logging:LogLevel:System.Net.Http"] = "Warning",
        };
        var host = new Host(HostProcess.Start(name, "InterpMesh.AnalysisWorker", settings), $"http://127.0.0.1:{port}");
        lock (sync)
            workers.Add(host);
        await host.Process.WaitHealthyAsync(host.Address, StartTimeout);
        return host;
    }

    /// <summary>SIGKILL: the host is gone at once (a node failure, the OOM killer).</summary>
    public void Kill(Host host)
    {
        host.Process.Kill();
        Retire(host);
    }

    /// <summary>SIGTERM (Kubernetes stopping a pod) and its exit, which must be clean.</summary>
    public async Task StopAsync(Host host)
    {
        int code = await host.Process.StopAsync(StopTimeout);
        Retire(host);
        if (code != 0)
            throw new Xunit.Sdk.XunitException($"{host.Name} exited with {code} after SIGTERM:\n{Tail(host.Process.Output)}");
    }

    private void Retire(Host host)
    {
        lock (sync)
        {
            gateways.Remove(host);
            workers.Remove(host);
            gone.Add(host);
        }
    }

    /// <summary>Replaces hosts that died or were stopped, so the next test finds two gateways and two workers serving.</summary>
    public async Task EnsureTwoOfEachAsync()
    {
        foreach (var host in Gateways.Concat(Workers).Where(h => h.Process.HasExited))
            Retire(host);
        var starting = new List<Task>();
        for (int i = Gateways.Count; i < 2; i++)
            starting.Add(StartGatewayAsync());
        for (int i = Workers.Count; i < 2; i++)
            starting.Add(StartWorkerAsync());
        await Task.WhenAll(starting);
    }

    /// <summary>The worker process whose id the store records with a job's lease (worker ids are machine/pid/random).</summary>
    public Host? WorkerHolding(JobInfo job)
    {
        if (job.WorkerId?.Split('/') is not [_, var pid, _])
            return null;
        return Workers.Concat(gone).FirstOrDefault(w => w.Process.Id.ToString(CultureInfo.InvariantCulture) == pid);
    }

    /// <summary>A job's whole event history from the store (WatchJob shows only what comes after it connects).</summary>
    public async Task<List<JobEventRecord>> EventsAsync(string id)
    {
        var admin = new JobCaller("test", IsAdmin: true);
        var all = new List<JobEventRecord>();
        while (true)
        {
            var page = await Store.ReadEventsAsync(id, admin, all.Count == 0 ? 0 : all[^1].Sequence);
            all.AddRange(page);
            if (page.Count < JobStoreLimits.MaxEventsPerRead)
                return all;
        }
    }

    /// <summary>Waits until <paramref name="gateway"/> lists the plugins of the tests as loaded.</summary>
    public async Task WhenPluginsPublishedAsync(Host gateway)
    {
        using var channel = Mesh.Channel(gateway.Address);
        var client = new AnalysisService.AnalysisServiceClient(channel);
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var plugins = (await client.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey))).Plugins;
            if (new[] { "slow", "sae" }.All(id => plugins.Any(p => p.Id == id && p.Loaded)))
                return;
            if (deadline.Elapsed > StartTimeout)
                throw new TimeoutException($"{gateway.Name} did not list slow and sae as loaded within {StartTimeout.TotalSeconds:0} s (it lists {string.Join(", ", plugins.Select(p => $"{p.Id}{(p.Loaded ? "" : $" ({p.Error})")}"))}){Outputs()}");
            await Task.Delay(200);
        }
    }

    /// <summary>The workers' output, those running and those killed or stopped.</summary>
    public IEnumerable<(string Name, string Output)> WorkerOutputs()
    {
        lock (sync)
            return [.. workers.Concat(gone).Where(h => h.Process.Name.StartsWith("worker", StringComparison.Ordinal)).Select(h => (h.Name, h.Process.Output))];
    }

    /// <summary>Every host's last lines (those still running, then those killed or stopped), for failure messages.</summary>
    public string Outputs()
    {
        List<Host> all;
        lock (sync)
            all = [ModelService, .. gateways, .. workers, .. gone];
        return string.Concat(all.Where(h => h is not null).Select(h =>
            $"\n\n--- {h.Name} ({h.Address}, pid {h.Process.Id}{(h.Process.HasExited ? $", exited {h.Process.ExitCode}" : "")}) ---\n{Tail(h.Process.Output)}"));
    }

    private static string Tail(string output)
    {
        var lines = output.Split('\n');
        return string.Join('\n', lines.Skip(Math.Max(0, lines.Length - OutputLinesInFailures)));
    }
}

/// <summary>
/// Issue #20's acceptance tests against real processes (<see cref="DistributedMesh"/>): a job
/// submitted through one gateway and watched through another; a worker killed during a long SAE
/// training whose job another worker resumes from its checkpoint; a gateway killed under a
/// WatchJob stream, the client going on through the other; a rolling restart of every gateway and
/// worker with twenty jobs in flight and their clients following them, none lost and none run
/// twice to completion; a gateway stopped under a job's streams ends them at once. A failure
/// carries the hosts' last output lines.
/// </summary>
[Collection("gateways")]
public sealed partial class DistributedProcessTests(DistributedMesh mesh, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<DistributedMesh>, IAsyncLifetime
{
    private static readonly TimeSpan JobTimeout = TimeSpan.FromSeconds(150);

    [GeneratedRegex(@"^step (\d+)/")]
    private static partial Regex StepMessage();

    public Task InitializeAsync() => mesh.EnsureTwoOfEachAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    private static AnalysisService.AnalysisServiceClient Client(Grpc.Net.Client.GrpcChannel channel) => new(channel);

    /// <summary>Runs a test's body; a failure is rethrown with the hosts' output.</summary>
    private async Task Diagnosed(Func<Task> body)
    {
        try
        {
            await body();
        }
        catch (Exception e)
        {
            throw new Xunit.Sdk.XunitException($"{e.GetType().Name}: {e.Message}{mesh.Outputs()}", e);
        }
    }

    /// <summary>Polls GetJob through <paramref name="client"/> until <paramref name="done"/> holds; fails after <paramref name="timeout"/> saying where the job was.</summary>
    private static async Task<Job> WaitForAsync(AnalysisService.AnalysisServiceClient client, string id, Func<Job, bool> done, string what, TimeSpan? timeout = null)
    {
        var limit = timeout ?? JobTimeout;
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var job = await client.GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
            if (done(job))
                return job;
            if (clock.Elapsed > limit)
                throw new TimeoutException($"job {id} did not get to {what} within {limit.TotalSeconds:0} s: it is {job.State} at {job.Progress:P0} ({job.Message}), attempt {job.Attempts}");
            await Task.Delay(50);
        }
    }

    private static async Task<List<JobEvent>> DrainAsync(AsyncServerStreamingCall<JobEvent> call)
    {
        var events = new List<JobEvent>();
        await foreach (var e in call.ResponseStream.ReadAllAsync())
            events.Add(e);
        return events;
    }

    private static Job Final(List<JobEvent> events, string id) =>
        events.Count > 0 && events[^1].Finished is { } final ? final : throw new Xunit.Sdk.XunitException($"the watch of job {id} ended without its final record ({events.Count} events)");

    private static string Slow(int steps) => $$"""{"steps": {{steps}}}""";

    [Fact]
    public Task A_job_submitted_through_one_gateway_is_watched_to_the_end_through_the_other_and_listed_by_both() => Diagnosed(async () =>
    {
        using var deadline = new CancellationTokenSource(JobTimeout);
        var (a, b) = (mesh.Gateways[0], mesh.Gateways[1]);
        using var channelA = Mesh.Channel(a.Address);
        using var channelB = Mesh.Channel(b.Address);

        var job = await Client(channelA).SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = Slow(8) }, Mesh.As(Mesh.AliceKey));
        using var watch = Client(channelB).WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey, deadline.Token));
        var final = Final(await DrainAsync(watch), job.Id);
        Assert.True(final.State == JobState.Succeeded, $"{final.State} {final.ErrorCode}: {final.Error}");
        Assert.Equal(("{\"steps\":8}", 1), (final.Result.SummaryJson, final.Attempts));
        foreach (var (gateway, channel) in new[] { (a, channelA), (b, channelB) })
        {
            var listed = await Client(channel).ListJobsAsync(new ListJobsRequest { PageSize = 500 }, Mesh.As(Mesh.AliceKey));
            Assert.True(listed.Jobs.Any(j => j.Id == job.Id && j.State == JobState.Succeeded),
                $"{gateway.Name} does not list job {job.Id} as SUCCEEDED: {string.Join(", ", listed.Jobs.Select(j => $"{j.Id} {j.State}"))}");
        }
    });

    [Fact]
    public Task A_worker_killed_during_a_long_sae_training_loses_its_lease_and_the_other_worker_resumes_the_job_from_its_checkpoint() => Diagnosed(async () =>
    {
        // Steps of 512 tokens: a checkpoint every 20 steps lies far apart from the next (its two writes take
        // a few ms), so the kill, which lands wherever the training is by then, almost never falls between
        // the two halves of one (a take killed there leaves no whole checkpoint and starts over, by design).
        const int Steps = 400, CheckpointEvery = 20;
        var gateway = mesh.Gateways[0];
        using var channel = Mesh.Channel(gateway.Address);
        var client = Client(channel);
        string parameters = JsonSerializer.Serialize(new
        {
            hook = "blocks.0.hook_resid_post", texts = Sentences(120), architecture = "topk", d_sae = 128, k = 8,
            steps = Steps, batch_tokens = 512, checkpoint_every = CheckpointEvery, save_as = $"saes/killed-{Guid.NewGuid():N}",
        });
        var job = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "sae", ParametersJson = parameters }, Mesh.As(Mesh.AliceKey));

        // Progress is reported every 10 steps, before that step's checkpoint is saved: once a step
        // past the first checkpoint is reported, that checkpoint is whole.
        var running = await WaitForAsync(client, job.Id, j => j.State != JobState.Queued && j.State != JobState.Running
            || StepMessage().Match(j.Message) is { Success: true } m && int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) > CheckpointEvery, $"a step past {CheckpointEvery}");
        Assert.True(running.State == JobState.Running, $"the training ended ({running.State}: {running.Error}) before the test could kill its worker; give it more steps");
        var held = await mesh.Store.GetAsync(job.Id, new JobCaller("test", IsAdmin: true));
        var victim = mesh.WorkerHolding(held) ?? throw new Xunit.Sdk.XunitException($"no worker process has the id the store records for job {job.Id}: {held.WorkerId}");
        var survivor = mesh.Workers.Single(w => w != victim);
        mesh.Kill(victim);
        var killed = Stopwatch.StartNew();
        output.WriteLine($"killed {victim.Name} (pid {victim.Process.Id}) at '{running.Message}'");

        // The lease expires (3 s) and the other worker takes the job again: it goes on from the checkpoint.
        var final = await WaitForAsync(client, job.Id, j => j.State is not (JobState.Queued or JobState.Running), "its end");
        string summaryJson = final.Result?.SummaryJson ?? "{}";
        output.WriteLine($"the job ended {killed.Elapsed.TotalSeconds:0.0} s after the kill: {final.State}, attempt {final.Attempts}, {summaryJson}");
        Assert.True(final.State == JobState.Succeeded, $"{final.State} {final.ErrorCode}: {final.Error}");
        Assert.Equal(2, final.Attempts);
        var summary = JsonNode.Parse(summaryJson)!;
        int? resumed = summary["resumed_from_step"]?.GetValue<int>();
        Assert.True(resumed is > 0, $"the second take did not resume from a checkpoint: {summaryJson}");
        Assert.True(resumed % CheckpointEvery == 0 && resumed < Steps, $"resumed from step {resumed}, not a checkpoint's step");
        Assert.Equal(Steps, summary["steps"]!.GetValue<int>());
        var finished = await mesh.Store.GetAsync(job.Id, new JobCaller("test", IsAdmin: true));
        Assert.True(mesh.WorkerHolding(finished) == survivor, $"job {job.Id} was finished by {finished.WorkerId}, not by {survivor.Name} (pid {survivor.Process.Id})");
        var events = await mesh.EventsAsync(job.Id);
        Assert.Contains(events, e => e.Kind == JobEventKind.State && e.State == StoredState.Queued && e.Message.Contains("lease expired", StringComparison.Ordinal));
        Assert.Single(events, e => e.Kind == JobEventKind.State && e.State == StoredState.Succeeded);
    });

    [Fact]
    public Task A_gateway_killed_under_a_watch_fails_the_stream_and_the_watch_goes_on_through_the_other_gateway_with_the_job_unaffected() => Diagnosed(async () =>
    {
        using var deadline = new CancellationTokenSource(JobTimeout);
        var (a, b) = (mesh.Gateways[0], mesh.Gateways[1]);
        using var channelA = Mesh.Channel(a.Address);
        var job = await Client(channelA).SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = Slow(60) }, Mesh.As(Mesh.AliceKey));
        using (var watch = Client(channelA).WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey, deadline.Token)))
        {
            // Follow it through A until the plugin has made progress, then kill A.
            while (true)
            {
                Assert.True(await watch.ResponseStream.MoveNext(), $"the watch through {a.Name} ended before the job made progress");
                Assert.True(watch.ResponseStream.Current.Finished is null, $"job {job.Id} finished before {a.Name} could be killed");
                if (watch.ResponseStream.Current.Progress?.Message.StartsWith("step ", StringComparison.Ordinal) == true)
                    break;
            }
            var before = await mesh.Store.GetAsync(job.Id, new JobCaller("test", IsAdmin: true));
            mesh.Kill(a);
            var error = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                while (await watch.ResponseStream.MoveNext())
                    Assert.True(watch.ResponseStream.Current.Finished is null, $"the watch through the killed {a.Name} delivered the job's end");
            });
            Assert.True(error.StatusCode is StatusCode.Unavailable or StatusCode.Internal or StatusCode.Cancelled, $"the cut stream failed with {error.StatusCode}: {error.Status.Detail}");

            // The client reconnects through B: the job ran on, on the same worker, in its one attempt.
            using var channelB = Mesh.Channel(b.Address);
            using var again = Client(channelB).WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey, deadline.Token));
            var events = await DrainAsync(again);
            var final = Final(events, job.Id);
            Assert.True(final.State == JobState.Succeeded, $"{final.State} {final.ErrorCode}: {final.Error}");
            Assert.Equal(("{\"steps\":60}", 1), (final.Result.SummaryJson, final.Attempts));
            var after = await mesh.Store.GetAsync(job.Id, new JobCaller("test", IsAdmin: true));
            Assert.Equal(before.WorkerId, after.WorkerId);
            var history = await mesh.EventsAsync(job.Id);
            Assert.Single(history, e => e.Kind == JobEventKind.State && e.State == StoredState.Running);
            Assert.Single(history, e => e.Kind == JobEventKind.State && e.State == StoredState.Succeeded);
        }
        // A replacement (on a new port) for the other tests.
        var replacement = await mesh.StartGatewayAsync();
        using var channel = Mesh.Channel(replacement.Address);
        Assert.Equal(JobState.Succeeded, (await Client(channel).GetJobAsync(new GetJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey))).State);
    });

    [Fact]
    public Task A_gateway_stopped_under_a_run_and_a_watch_ends_both_streams_as_unavailable_and_leaves_the_job_running() => Diagnosed(async () =>
    {
        using var deadline = new CancellationTokenSource(JobTimeout);
        // A job longer than the gateway's drain (HostOptions.ShutdownTimeout, 30 s here): its streams do not end by themselves.
        var (a, b) = (mesh.Gateways[0], mesh.Gateways[1]);
        using var channelA = Mesh.Channel(a.Address, InterpMesh.Client.ChannelRetry.None);
        using var run = Client(channelA).RunAnalysis(new AnalysisRequest { Plugin = "slow", ParametersJson = Slow(3000) }, Mesh.As(Mesh.AliceKey, deadline.Token));
        string? id = null;
        while (id is null)
        {
            Assert.True(await run.ResponseStream.MoveNext(), $"the run through {a.Name} ended before it made progress");
            if (run.ResponseStream.Current.Progress is { } p && p.Message.StartsWith("step ", StringComparison.Ordinal))
                id = p.JobId;
        }
        using var watch = Client(channelA).WatchJob(new WatchJobRequest { Id = id }, Mesh.As(Mesh.AliceKey, deadline.Token));
        Assert.True(await watch.ResponseStream.MoveNext(), $"the watch through {a.Name} sent nothing");

        // SIGTERM (a rollout): the gateway stops, and its streams end saying so; the caller did not go away, so the job runs on.
        var clock = Stopwatch.StartNew();
        await mesh.StopAsync(a);
        output.WriteLine($"{a.Name} stopped {clock.Elapsed.TotalSeconds:0.0} s after SIGTERM");
        // Not held for the drain by streams that would only end with the job.
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"{a.Name} took {clock.Elapsed.TotalSeconds:0} s to stop: its job streams held it for the drain");
        foreach (var (what, call) in new[] { ("run", run), ("watch", watch) })
        {
            var error = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                while (await call.ResponseStream.MoveNext())
                    Assert.True(call.ResponseStream.Current.Finished is null, $"the {what} through the stopped {a.Name} delivered the job's end: {call.ResponseStream.Current.Finished}");
            });
            Assert.True(error.StatusCode == StatusCode.Unavailable, $"the {what} through the stopping {a.Name} ended with {error.StatusCode}: {error.Status.Detail}");
        }
        using var channelB = Mesh.Channel(b.Address);
        var client = Client(channelB);
        var seen = await client.GetJobAsync(new GetJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
        Assert.True(seen.State == JobState.Running, $"job {id} is {seen.State} ({seen.ErrorCode}: {seen.Error}) after the gateway its run came through stopped");
        var later = await WaitForAsync(client, id, j => j.State != JobState.Running || j.Progress > seen.Progress, "more progress");
        Assert.Equal((JobState.Running, 1), (later.State, later.Attempts));
        await client.CancelJobAsync(new CancelJobRequest { Id = id }, Mesh.As(Mesh.AliceKey));
        await WaitForAsync(client, id, j => j.State != JobState.Running, "its cancellation");
    });

    [Fact]
    public Task A_rolling_restart_of_every_gateway_and_worker_with_twenty_jobs_in_flight_loses_none_and_runs_none_twice() => Diagnosed(async () =>
    {
        const int Jobs = 20, Steps = 40;
        var submitters = mesh.Gateways.ToList();
        var ids = new List<string>();
        for (int i = 0; i < Jobs; i++)
        {
            using var channel = Mesh.Channel(submitters[i % 2].Address);
            ids.Add((await Client(channel).SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = Slow(Steps) }, Mesh.As(Mesh.AliceKey))).Id);
        }

        // Each job's client follows it through the gateways, moving to another when its stream ends.
        int reconnects = 0;
        using var following = new CancellationTokenSource(TimeSpan.FromSeconds(240));
        var followers = ids.Select((id, i) => Task.Run(async () =>
        {
            for (int take = i; ; take++)
            {
                var gateways = mesh.Gateways;
                var gateway = gateways[take % gateways.Count];
                try
                {
                    using var channel = Mesh.Channel(gateway.Address, InterpMesh.Client.ChannelRetry.None);
                    using var call = Client(channel).WatchJob(new WatchJobRequest { Id = id }, Mesh.As(Mesh.AliceKey, following.Token));
                    await foreach (var e in call.ResponseStream.ReadAllAsync(following.Token))
                    {
                        if (e.Finished is { } final)
                            return final;
                    }
                    throw new Xunit.Sdk.XunitException($"the watch of job {id} through {gateway.Name} ended without its final record");
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !following.IsCancellationRequested)
                {
                    Interlocked.Increment(ref reconnects);
                    await Task.Delay(100, following.Token);
                }
            }
        })).ToList();

        // One host at a time, a replacement serving before the old one gets SIGTERM (maxUnavailable 0, maxSurge 1).
        var clock = Stopwatch.StartNew();
        var old = new[] { mesh.Workers[0], mesh.Gateways[0], mesh.Workers[1], mesh.Gateways[1] };
        int inFlightAtStops = 0;
        foreach (var host in old)
        {
            bool worker = mesh.Workers.Contains(host);
            if (worker)
                await mesh.StartWorkerAsync();
            else
                await mesh.StartGatewayAsync();
            var counts = await mesh.Store.CountAsync();
            inFlightAtStops += (int)(counts.Queued + counts.Running);
            output.WriteLine($"{clock.Elapsed.TotalSeconds:0.0} s: stopping {host.Name} with {counts.Queued} jobs queued and {counts.Running} running");
            await mesh.StopAsync(host);
        }
        Assert.True(inFlightAtStops > 0, "every job had finished before the first host was stopped: the restart proves nothing; give the jobs more steps");

        // Every job ends, and its client saw the end through the new gateways.
        using var now = Mesh.Channel(mesh.Gateways[0].Address);
        var client = Client(now);
        var finals = new List<Job>();
        foreach (var id in ids)
            finals.Add(await WaitForAsync(client, id, j => j.State is not (JobState.Queued or JobState.Running), "its end", TimeSpan.FromSeconds(180)));
        var watched = await Task.WhenAll(followers);
        Assert.Equal(finals.Select(j => (j.Id, j.State)), watched.Select(j => (j.Id, j.State)));
        output.WriteLine($"{clock.Elapsed.TotalSeconds:0.0} s: every follower saw its job's end, after {reconnects} reconnections");
        Assert.True(reconnects > 0, "no follower's stream was ended by a gateway stopping: the restart did not meet a watcher");
        var failed = finals.Where(j => j.State != JobState.Succeeded).ToList();
        Assert.True(failed.Count == 0, $"{failed.Count} of {Jobs} jobs did not succeed: {string.Join("; ", failed.Select(j => $"{j.Id} {j.State} {j.ErrorCode}: {j.Error}"))}");
        // A graceful hand-back is not an attempt: every job is on its first.
        Assert.All(finals, j => Assert.True(j.Attempts == 1, $"job {j.Id} is on attempt {j.Attempts}"));
        int handedBack = 0;
        foreach (var id in ids)
        {
            var events = await mesh.EventsAsync(id);
            var states = events.Where(e => e.Kind == JobEventKind.State).ToList();
            string history = string.Join(" | ", states.Select(e => $"{e.State}: {e.Message}"));
            // Completed exactly once: one final state event, the last one, after the last take.
            Assert.True(states.Count(e => JobStates.IsFinal(e.State)) == 1 && states[^1].State == StoredState.Succeeded, $"job {id} did not end exactly once: {history}");
            int requeued = states.Count(e => e.State == StoredState.Queued && e.Message.StartsWith("re-queued", StringComparison.Ordinal));
            Assert.True(requeued == states.Count(e => e.State == StoredState.Running) - 1, $"job {id}'s takes and hand-backs do not add up: {history}");
            Assert.DoesNotContain(states, e => e.Message.Contains("lease expired", StringComparison.Ordinal));
            handedBack += requeued;
        }
        output.WriteLine($"{clock.Elapsed.TotalSeconds:0.0} s: all {Jobs} jobs succeeded; {handedBack} hand-backs by stopping workers");
        // The workers say the same: each hand-back in the store is one a stopping worker logged, and
        // no worker ran on with a job it had lost (the store would refuse its completion, but it ran twice).
        var lines = mesh.WorkerOutputs().SelectMany(w => w.Output.Split('\n').Select(line => (w.Name, Line: line)))
            .Where(l => ids.Any(id => l.Line.Contains(id, StringComparison.Ordinal))).ToList();
        Assert.Equal(handedBack, lines.Count(l => l.Line.Contains("went back to the queue", StringComparison.Ordinal)));
        var lost = lines.Where(l => l.Line.Contains("lease", StringComparison.Ordinal)).ToList();
        Assert.True(lost.Count == 0, $"workers lost leases: {string.Join('\n', lost.Select(l => $"{l.Name}: {l.Line}"))}");
        // The stopped workers had jobs to hand back (each ran two at a time with more queued).
        Assert.True(handedBack > 0, "no job was handed back by a stopping worker: the restart did not meet a running job");
    });

    /// <summary>Sentences of the "concepts" toy model's grammar (as the SAE end-to-end tests train on).</summary>
    private static List<string> Sentences(int n)
    {
        string[] nouns = ["dog", "cat", "bird", "horse", "apple", "cake", "pie", "soup", "ball", "game", "team", "race"];
        string[] pos = ["happy", "good", "bright", "warm", "kind"], neg = ["sad", "bad", "dark", "cold", "cruel"];
        string[] pex = ["lovely", "great", "nice"], nex = ["awful", "grim", "poor"], topic = ["walk", "meal", "match"];
        var rng = new Random(7);
        return [.. Enumerable.Range(0, n).Select(_ =>
        {
            int t = rng.Next(3);
            bool good = rng.Next(2) == 0, plural = rng.Next(2) == 0;
            string noun = nouns[t * 4 + rng.Next(4)] + (plural ? "s" : "");
            return $"the {noun} {(plural ? "are" : "is")} {(good ? pos : neg)[rng.Next(5)]} . what a {(good ? pex : nex)[rng.Next(3)]} {topic[t]} .";
        })];
    }
}
