using System.Collections.Concurrent;

namespace InterpMesh.Jobs.Tests;

/// <summary>
/// The job store's behaviour, one suite for every implementation: each subclass opens its kind of
/// store on a fresh database. Times move on a <see cref="ManualClock"/>, so lease expiry needs no
/// real waiting.
/// </summary>
public abstract class JobStoreContract
{
    protected static readonly JobCaller Alice = new("alice", IsAdmin: false);
    protected static readonly JobCaller Bob = new("bob", IsAdmin: false);
    protected static readonly JobCaller Admin = new("ops", IsAdmin: true);
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(30);

    /// <summary>A new, empty database; what <see cref="OpenAsync"/> takes to open it.</summary>
    protected abstract Task<string> CreateDatabaseAsync();

    /// <summary>Opens a store (applying migrations) on a database from <see cref="CreateDatabaseAsync"/>.</summary>
    protected abstract Task<SqlJobStore> OpenAsync(string database, JobStoreOptions options);

    /// <summary>Runs one SQL statement on the database directly (to fake what another build wrote).</summary>
    protected abstract Task ExecuteRawAsync(string database, string sql);

    private async Task<SqlJobStore> NewStoreAsync(ManualClock? clock = null, int maxAttempts = 3, int maxRunningPerOwner = 100) =>
        await OpenAsync(await CreateDatabaseAsync(), new JobStoreOptions { Clock = clock ?? new ManualClock(), MaxAttempts = maxAttempts, MaxRunningPerOwner = maxRunningPerOwner });

    private static NewJob Job(string owner, string plugin = "probing", string parameters = """{"layer":1}""") => new(owner, plugin, "tiny", parameters, 60);

    private static async Task<JobStoreException> Refused(JobStoreError error, Func<Task> action)
    {
        var e = await Assert.ThrowsAsync<JobStoreException>(action);
        Assert.Equal(error, e.Error);
        return e;
    }

    // ---- records --------------------------------------------------------------------------------

    [Fact]
    public async Task Submit_stores_a_queued_record_with_its_first_event()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        var job = await store.SubmitAsync(new NewJob("alice", "sae", "tiny", """{"k":8}""", 120, "00-trace-01"));
        Assert.StartsWith("job-", job.Id, StringComparison.Ordinal);
        Assert.Equal(JobState.Queued, job.State);
        Assert.Equal(clock.GetUtcNow(), job.Created);
        Assert.Equal(0, job.Attempts);

        var read = await store.GetAsync(job.Id, Alice);
        Assert.Equal(("alice", "sae", "tiny", """{"k":8}""", 120, "00-trace-01"), (read.Owner, read.Plugin, read.Model, read.ParametersJson, read.TimeoutSeconds, read.TraceParent));
        var events = await store.ReadEventsAsync(job.Id, Alice, 0);
        var first = Assert.Single(events);
        Assert.Equal((1L, JobEventKind.State, JobState.Queued), (first.Sequence, first.Kind, first.State));
        Assert.Equal(1, read.LastEventSequence);
    }

    public static TheoryData<string, string, string, string, int, string> BadJobs => new()
    {
        { "", "probing", "tiny", "{}", 0, "owner" },
        { "alice", " ", "tiny", "{}", 0, "plugin" },
        { "alice", "probing", "", "{}", 0, "model" },
        { "alice", "probing", "tiny", "{not json", 0, "not valid JSON" },
        { "alice", "probing", "tiny", "[1,2]", 0, "must be a JSON object, not array" },
        { "alice", "probing", "tiny", "{}", -1, "timeout_seconds" },
    };

    [Theory]
    [MemberData(nameof(BadJobs))]
    public async Task Submit_refuses_bad_input_naming_the_field(string owner, string plugin, string model, string parameters, int timeout, string named)
    {
        await using var store = await NewStoreAsync();
        var e = await Refused(JobStoreError.InvalidArgument, () => store.SubmitAsync(new NewJob(owner, plugin, model, parameters, timeout)));
        Assert.Contains(named, e.Message, StringComparison.Ordinal);
        Assert.Equal(new JobCounts(0, 0), await store.CountAsync());
    }

    [Fact]
    public async Task Submit_limits_hold_per_key_and_for_the_queue()
    {
        await using var store = await NewStoreAsync();
        var perKey = new SubmitLimits(MaxActivePerOwner: 2);
        await store.SubmitAsync(Job("alice"), perKey);
        await store.SubmitAsync(Job("alice"), perKey);
        var e = await Refused(JobStoreError.ResourceExhausted, () => store.SubmitAsync(Job("alice"), perKey));
        Assert.Contains("limit 2", e.Message, StringComparison.Ordinal);
        Assert.False(e.WorthRetrying);
        await store.SubmitAsync(Job("bob"), perKey);

        var queue = new SubmitLimits(MaxQueued: 3);
        e = await Refused(JobStoreError.ResourceExhausted, () => store.SubmitAsync(Job("carol"), queue));
        Assert.Contains("queue is full (3 waiting)", e.Message, StringComparison.Ordinal);
        Assert.True(e.WorthRetrying);
        await Refused(JobStoreError.InvalidArgument, () => store.SubmitAsync(Job("carol"), new SubmitLimits(-1)));
        Assert.Equal(new JobCounts(3, 0), await store.CountAsync());
    }

    [Fact]
    public async Task Submit_limits_hold_under_concurrent_submissions()
    {
        await using var store = await NewStoreAsync();
        var limits = new SubmitLimits(MaxActivePerOwner: 5);
        var outcomes = await Task.WhenAll(Enumerable.Range(0, 12).Select(async _ =>
        {
            try
            {
                await store.SubmitAsync(Job("alice"), limits);
                return true;
            }
            catch (JobStoreException e) when (e.Error == JobStoreError.ResourceExhausted)
            {
                return false;
            }
        }));
        Assert.Equal(5, outcomes.Count(x => x));
        Assert.Equal(5, (await store.CountAsync()).Queued);
    }

    [Fact]
    public async Task Get_refuses_unknown_ids_and_other_keys_jobs_but_not_admins()
    {
        await using var store = await NewStoreAsync();
        var job = await store.SubmitAsync(Job("alice"));
        await Refused(JobStoreError.NotFound, () => store.GetAsync("job-0000000000000000", Alice));
        await Refused(JobStoreError.InvalidArgument, () => store.GetAsync("", Alice));
        var e = await Refused(JobStoreError.PermissionDenied, () => store.GetAsync(job.Id, Bob));
        Assert.Contains("belongs to key 'alice'", e.Message, StringComparison.Ordinal);
        await Refused(JobStoreError.PermissionDenied, () => store.ReadEventsAsync(job.Id, Bob, 0));
        Assert.Equal(job.Id, (await store.GetAsync(job.Id, Admin)).Id);
    }

    // ---- listing ---------------------------------------------------------------------------------

    [Fact]
    public async Task List_pages_newest_first_and_stays_stable_while_jobs_arrive()
    {
        await using var store = await NewStoreAsync();
        var submitted = new List<string>();
        for (int i = 0; i < 7; i++)
            submitted.Add((await store.SubmitAsync(Job("alice"))).Id);

        var first = await store.ListAsync(new JobListQuery(Alice, PageSize: 3));
        Assert.Equal(3, first.Jobs.Count);
        Assert.NotEqual("", first.NextPageToken);
        // A job submitted between pages neither shifts nor repeats the later pages.
        string late = (await store.SubmitAsync(Job("alice"))).Id;
        var second = await store.ListAsync(new JobListQuery(Alice, PageSize: 3, PageToken: first.NextPageToken));
        var third = await store.ListAsync(new JobListQuery(Alice, PageSize: 3, PageToken: second.NextPageToken));
        Assert.Single(third.Jobs);
        Assert.Equal("", third.NextPageToken);

        var listed = first.Jobs.Concat(second.Jobs).Concat(third.Jobs).Select(j => j.Id).ToList();
        Assert.Equal(Enumerable.Reverse(submitted), listed);
        Assert.Equal(late, (await store.ListAsync(new JobListQuery(Alice, PageSize: 1))).Jobs.Single().Id);
        Assert.Equal(8, (await store.ListAsync(new JobListQuery(Alice))).Jobs.Count);
    }

    [Fact]
    public async Task List_shows_a_key_only_its_own_jobs_and_an_admin_all()
    {
        await using var store = await NewStoreAsync();
        await store.SubmitAsync(Job("alice", "probing"));
        await store.SubmitAsync(Job("alice", "sae"));
        await store.SubmitAsync(Job("bob", "probing"));

        Assert.All((await store.ListAsync(new JobListQuery(Alice))).Jobs, j => Assert.Equal("alice", j.Owner));
        Assert.Equal(2, (await store.ListAsync(new JobListQuery(Alice))).Jobs.Count);
        Assert.Single((await store.ListAsync(new JobListQuery(Bob))).Jobs);
        Assert.Equal(3, (await store.ListAsync(new JobListQuery(Admin))).Jobs.Count);
        Assert.Single((await store.ListAsync(new JobListQuery(Admin, Owner: "bob"))).Jobs);
        Assert.Equal(2, (await store.ListAsync(new JobListQuery(Admin, Plugin: "probing"))).Jobs.Count);
        Assert.Single((await store.ListAsync(new JobListQuery(Alice, Plugin: "probing"))).Jobs);
        var e = await Refused(JobStoreError.PermissionDenied, () => store.ListAsync(new JobListQuery(Alice, Owner: "bob")));
        Assert.Contains("only its own jobs", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(-1, "", "page_size")]
    [InlineData(JobStoreLimits.MaxPageSize + 1, "", "page_size")]
    [InlineData(10, "garbage!", "page_token")]
    [InlineData(10, "am9icy1iZWZvcmU6LTU", "page_token")] // "jobs-before:-5"
    [InlineData(10, "b3RoZXI6NQ", "page_token")] // "other:5"
    public async Task List_refuses_a_bad_page_size_or_token(int size, string token, string named)
    {
        await using var store = await NewStoreAsync();
        var e = await Refused(JobStoreError.InvalidArgument, () => store.ListAsync(new JobListQuery(Alice, size, token)));
        Assert.Contains(named, e.Message, StringComparison.Ordinal);
    }

    // ---- the queue -------------------------------------------------------------------------------

    [Fact]
    public async Task Parallel_takers_never_get_the_same_job()
    {
        await using var store = await NewStoreAsync();
        var submitted = new HashSet<string>();
        for (int i = 0; i < 40; i++)
            submitted.Add((await store.SubmitAsync(Job($"key{i % 4}"))).Id);

        var taken = new ConcurrentBag<string>();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
        {
            while (await store.TakeAsync($"worker-{w}", Lease) is { } lease)
                taken.Add(lease.Job.Id);
        })));
        Assert.Equal(40, taken.Count);
        Assert.Equal(submitted, taken.ToHashSet());
        Assert.Equal(new JobCounts(0, 40), await store.CountAsync());
    }

    [Fact]
    public async Task Take_is_round_robin_over_keys_so_a_burst_does_not_starve_others()
    {
        await using var store = await NewStoreAsync();
        for (int i = 0; i < 40; i++)
            await store.SubmitAsync(Job("alice"));
        var bobs = new[] { (await store.SubmitAsync(Job("bob"))).Id, (await store.SubmitAsync(Job("bob"))).Id };

        var order = new List<JobInfo>();
        while (order.Count(j => j.Owner == "alice") < 10)
            order.Add((await store.TakeAsync("w", Lease))!.Job);
        // Both of bob's jobs are taken before alice's tenth.
        Assert.Equal(bobs, order.Where(j => j.Owner == "bob").Select(j => j.Id));
        // And each key's jobs in their own submission order.
        var alices = order.Where(j => j.Owner == "alice").Select(j => j.Created).ToList();
        Assert.Equal(alices.Order(), alices);
    }

    [Fact]
    public async Task Take_skips_a_key_at_its_running_limit_until_one_of_its_jobs_ends()
    {
        await using var store = await NewStoreAsync(maxRunningPerOwner: 2);
        for (int i = 0; i < 4; i++)
            await store.SubmitAsync(Job("alice"));
        var a = await store.TakeAsync("w1", Lease);
        var b = await store.TakeAsync("w2", Lease);
        Assert.NotNull(a);
        Assert.NotNull(b);
        Assert.Null(await store.TakeAsync("w3", Lease));
        var bobs = await store.SubmitAsync(Job("bob"));
        Assert.Equal(bobs.Id, (await store.TakeAsync("w3", Lease))!.Job.Id);

        Assert.True(await store.CompleteAsync(a!, JobOutcome.Succeeded("{}")));
        var c = await store.TakeAsync("w1", Lease);
        Assert.Equal("alice", c!.Job.Owner);
        Assert.Null(await store.TakeAsync("w4", Lease));
    }

    [Fact]
    public async Task A_key_given_its_own_running_limit_runs_that_many_and_can_be_returned_to_the_default()
    {
        await using var store = await NewStoreAsync(maxRunningPerOwner: 1);
        await store.SetRunningLimitAsync("alice", 3);
        for (int i = 0; i < 5; i++)
        {
            await store.SubmitAsync(Job("alice"));
            await store.SubmitAsync(Job("bob"));
        }
        var taken = new List<JobLease>();
        while (await store.TakeAsync("w", Lease) is { } lease)
            taken.Add(lease);
        Assert.Equal(3, taken.Count(l => l.Job.Owner == "alice"));
        Assert.Equal(1, taken.Count(l => l.Job.Owner == "bob"));

        await store.SetRunningLimitAsync("alice", null);
        foreach (var lease in taken.Where(l => l.Job.Owner == "alice").Take(2))
            await store.CompleteAsync(lease, JobOutcome.Succeeded("{}"));
        // One of alice's still runs: at the default of 1 she gets no more.
        Assert.Null(await store.TakeAsync("w", Lease));

        await Refused(JobStoreError.InvalidArgument, () => store.SetRunningLimitAsync("alice", 0));
        await Refused(JobStoreError.InvalidArgument, () => store.SetRunningLimitAsync("", 2));
    }

    [Fact]
    public async Task An_expired_lease_requeues_the_job_with_its_attempt_count_then_fails_it_after_the_maximum()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock, maxAttempts: 2);
        var job = await store.SubmitAsync(Job("alice"));

        var first = await store.TakeAsync("worker-1", TimeSpan.FromSeconds(10));
        Assert.Equal((job.Id, 1, "worker-1"), (first!.Job.Id, first.Job.Attempts, first.Job.WorkerId));
        clock.Advance(TimeSpan.FromSeconds(11));

        var second = await store.TakeAsync("worker-2", TimeSpan.FromSeconds(10));
        Assert.Equal((job.Id, 2, "worker-2"), (second!.Job.Id, second.Job.Attempts, second.Job.WorkerId));
        // The first worker, back from a partition, has lost the job: no heartbeat, no completion.
        Assert.Equal(LeaseStatus.Lost, await store.HeartbeatAsync(first));
        Assert.Equal(LeaseStatus.Lost, await store.ReportProgressAsync(first, 0.5, "late"));
        Assert.False(await store.CompleteAsync(first, JobOutcome.Succeeded("""{"stale":true}""")));

        clock.Advance(TimeSpan.FromSeconds(11));
        Assert.Equal(1, await store.RequeueExpiredAsync());
        var failed = await store.GetAsync(job.Id, Alice);
        Assert.Equal(JobState.Failed, failed.State);
        Assert.Equal("ABORTED", failed.ErrorCode);
        Assert.Contains("attempt 2 of 2", failed.Error, StringComparison.Ordinal);
        Assert.Null(failed.ResultJson);
        Assert.Null(await store.TakeAsync("worker-3", Lease));
        Assert.False(await store.CompleteAsync(second, JobOutcome.Succeeded("{}")));

        var messages = (await store.ReadEventsAsync(job.Id, Alice, 0)).Select(e => (e.State, e.Message)).ToList();
        Assert.Contains((JobState.Queued, "re-queued: worker worker-1's lease expired on attempt 1 of 2"), messages);
        Assert.Equal(JobState.Failed, messages[^1].State);
    }

    [Fact]
    public async Task Workers_that_stall_die_and_come_back_never_lose_a_job_or_complete_one_twice()
    {
        // A seeded random schedule of takes, heartbeats, completions, workers dying and time passing.
        const int Jobs = 30, MaxAttempts = 3;
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock, maxAttempts: MaxAttempts);
        var ids = new List<string>();
        for (int i = 0; i < Jobs; i++)
            ids.Add((await store.SubmitAsync(Job($"key{i % 3}"))).Id);
        var random = new Random(20);
        var held = new JobLease?[4];
        var completions = ids.ToDictionary(id => id, _ => 0);
        int refused = 0;
        for (int step = 0; step < 3000 && (await store.CountAsync()) is { Queued: > 0 } or { Running: > 0 }; step++)
        {
            int w = random.Next(held.Length);
            if (held[w] is not { } lease)
            {
                held[w] = await store.TakeAsync($"w{w}", TimeSpan.FromSeconds(10));
                if (held[w] is null)
                    clock.Advance(TimeSpan.FromSeconds(4)); // nothing to take: time passes while the worker polls
                continue;
            }
            int action = random.Next(100);
            if (action < 30)
            {
                if (await store.HeartbeatAsync(lease) == LeaseStatus.Lost)
                    held[w] = null;
            }
            else if (action < 60)
            {
                if (await store.CompleteAsync(lease, JobOutcome.Succeeded($$"""{"by":"w{{w}}"}""")))
                    completions[lease.Job.Id]++;
                else
                    refused++;
                held[w] = null;
            }
            else if (action < 70)
            {
                held[w] = null; // the worker dies; its lease runs out
            }
            else
            {
                clock.Advance(TimeSpan.FromSeconds(6)); // a stall: some leases expire under their holders
            }
        }
        Assert.Equal(new JobCounts(0, 0), await store.CountAsync());
        var attempts = new List<int>();
        foreach (var id in ids)
        {
            var job = await store.GetAsync(id, Admin);
            attempts.Add(job.Attempts);
            Assert.InRange(completions[id], 0, 1);
            if (job.State == JobState.Succeeded)
                Assert.Equal(1, completions[id]);
            else
                Assert.Equal((JobState.Failed, "ABORTED", MaxAttempts, 0), (job.State, job.ErrorCode, job.Attempts, completions[id]));
            Assert.InRange(job.Attempts, 1, MaxAttempts);
        }
        // The schedule did exercise what it is for: successes, re-queued jobs and stale completions refused.
        Assert.Contains(ids, id => completions[id] == 1);
        Assert.True(refused > 0, "no stale completion was attempted; the schedule tests nothing");
        Assert.Contains(attempts, a => a > 1);
    }

    [Fact]
    public async Task Heartbeats_keep_a_lease_that_would_otherwise_expire()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", TimeSpan.FromSeconds(10));
        for (int i = 0; i < 3; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(8));
            Assert.Equal(LeaseStatus.Held, await store.HeartbeatAsync(lease!));
            Assert.Equal(0, await store.RequeueExpiredAsync());
        }
        var job = await store.GetAsync(lease!.Job.Id, Alice);
        Assert.Equal((JobState.Running, 1), (job.State, job.Attempts));
        Assert.Equal(clock.GetUtcNow() + TimeSpan.FromSeconds(10), job.LeaseExpires);
        clock.Advance(TimeSpan.FromSeconds(11));
        Assert.Equal(1, await store.RequeueExpiredAsync());
        Assert.Equal(JobState.Queued, (await store.GetAsync(job.Id, Alice)).State);
    }

    [Fact]
    public async Task A_late_heartbeat_keeps_the_lease_while_nobody_has_requeued_the_job()
    {
        // Expiry makes a job re-queueable; until a taker or reaper re-queues it, its worker may still renew.
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", TimeSpan.FromSeconds(10));
        clock.Advance(TimeSpan.FromSeconds(15));
        Assert.Equal(LeaseStatus.Held, await store.HeartbeatAsync(lease!));
        Assert.Equal(0, await store.RequeueExpiredAsync());
        Assert.True(await store.CompleteAsync(lease!, JobOutcome.Succeeded("{}")));
    }

    [Fact]
    public async Task Complete_records_the_result_and_the_outcome()
    {
        await using var store = await NewStoreAsync();
        var ok = await store.SubmitAsync(Job("alice"));
        var bad = await store.SubmitAsync(Job("alice"));
        var okLease = await store.TakeAsync("w", Lease);
        var badLease = await store.TakeAsync("w", Lease);
        Assert.True(await store.CompleteAsync(okLease!, JobOutcome.Succeeded("""{"accuracy":0.9}""")));
        Assert.True(await store.CompleteAsync(badLease!, JobOutcome.Failed("the plugin failed: boom", "INTERNAL")));
        Assert.False(await store.CompleteAsync(okLease!, JobOutcome.Failed("twice", "INTERNAL")));

        var done = await store.GetAsync(ok.Id, Alice);
        Assert.Equal((JobState.Succeeded, 1.0, """{"accuracy":0.9}""", ""), (done.State, done.Progress, done.ResultJson, done.Error));
        Assert.NotNull(done.Finished);
        Assert.Null(done.LeaseExpires);
        var failed = await store.GetAsync(bad.Id, Alice);
        Assert.Equal((JobState.Failed, "the plugin failed: boom", "INTERNAL"), (failed.State, failed.Error, failed.ErrorCode));
        Assert.Equal(new JobCounts(0, 0), await store.CountAsync());
    }

    [Fact]
    public async Task Take_and_worker_reports_refuse_bad_input()
    {
        await using var store = await NewStoreAsync();
        await Refused(JobStoreError.InvalidArgument, () => store.TakeAsync("", Lease));
        await Refused(JobStoreError.InvalidArgument, () => store.TakeAsync("w", TimeSpan.Zero));
        await Refused(JobStoreError.InvalidArgument, () => store.TakeAsync("w", TimeSpan.FromDays(2)));
        await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", Lease);
        await Refused(JobStoreError.InvalidArgument, () => store.ReportProgressAsync(lease!, 1.5, "too far"));
        await Refused(JobStoreError.InvalidArgument, () => store.ReportProgressAsync(lease!, double.NaN, "nan"));
        await Refused(JobStoreError.InvalidArgument, () => store.AppendLogAsync(lease!, ""));
        Assert.Throws<ArgumentException>(() => JobOutcome.Failed("", "INTERNAL"));
        Assert.Throws<ArgumentNullException>(() => JobOutcome.Succeeded(null!));
        Assert.Throws<ArgumentOutOfRangeException>(() => new OptionsProbe(new JobStoreOptions { MaxAttempts = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new OptionsProbe(new JobStoreOptions { MaxRunningPerOwner = 0 }));
    }

    /// <summary>Constructs the shared base only, to check option validation without a database.</summary>
    private sealed class OptionsProbe(JobStoreOptions options) : SqlJobStore(options)
    {
        protected override string MigrationFolder => "Sqlite";
        protected override string ForUpdate => "";
        protected override string ForUpdateSkipLocked => "";
        protected override Task<System.Data.Common.DbConnection> OpenConnectionAsync(CancellationToken cancellationToken) => throw new InvalidOperationException("no database");
        protected override Task<WriteScope> BeginWriteAsync(CancellationToken cancellationToken) => throw new InvalidOperationException("no database");
        protected override Task LockSchemaAsync(WriteScope write, CancellationToken cancellationToken) => Task.CompletedTask;
        public override ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    [Fact]
    public async Task A_lease_keeper_holds_the_lease_and_stops_the_run_when_cancelled()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        var job = await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", TimeSpan.FromMilliseconds(300));
        await using var keeper = LeaseKeeper.Start(store, lease!);
        // Heartbeats move the expiry with the clock: no re-queue although the lease's duration passes many times.
        for (int i = 0; i < 5; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(200));
            await WaitUntil(async () => (await store.GetAsync(job.Id, Alice)).LeaseExpires > clock.GetUtcNow());
            Assert.Equal(0, await store.RequeueExpiredAsync());
        }
        Assert.False(keeper.Stopping.IsCancellationRequested);

        await store.CancelAsync(job.Id, Alice);
        await WaitUntil(() => Task.FromResult(keeper.Stopping.IsCancellationRequested));
        Assert.Equal(LeaseStatus.CancelRequested, keeper.Status);
        Assert.True(await store.CompleteAsync(lease!, JobOutcome.Cancelled("cancelled by alice")));
    }

    [Fact]
    public async Task A_lease_keeper_whose_lease_was_lost_stops_the_run()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", TimeSpan.FromSeconds(30));
        // The worker stalls past its lease and another worker takes the job over.
        clock.Advance(TimeSpan.FromSeconds(31));
        var other = await store.TakeAsync("w2", TimeSpan.FromSeconds(30));
        Assert.Equal(2, other!.Job.Attempts);
        await using var keeper = LeaseKeeper.Start(store, lease! with { Duration = TimeSpan.FromMilliseconds(150) });
        await WaitUntil(() => Task.FromResult(keeper.Stopping.IsCancellationRequested));
        Assert.Equal(LeaseStatus.Lost, keeper.Status);
    }

    private static async Task WaitUntil(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the condition did not hold within 20 s");
            await Task.Delay(20);
        }
    }

    // ---- events and cancellation -----------------------------------------------------------------

    [Fact]
    public async Task Events_are_numbered_per_job_and_read_after_a_sequence_number()
    {
        await using var store = await NewStoreAsync();
        var job = await store.SubmitAsync(Job("alice"));
        await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", Lease);
        Assert.Equal(job.Id, lease!.Job.Id);
        Assert.Equal(LeaseStatus.Held, await store.ReportProgressAsync(lease, 0.5, "half way"));
        Assert.Equal(LeaseStatus.Held, await store.AppendLogAsync(lease, "checkpoint saved"));
        Assert.True(await store.CompleteAsync(lease, JobOutcome.Succeeded("{}")));

        var all = await store.ReadEventsAsync(job.Id, Alice, 0);
        Assert.Equal([1L, 2, 3, 4, 5], all.Select(e => e.Sequence));
        Assert.Equal(
            [(JobEventKind.State, JobState.Queued), (JobEventKind.State, JobState.Running), (JobEventKind.Progress, JobState.Running), (JobEventKind.Log, JobState.Running), (JobEventKind.State, JobState.Succeeded)],
            all.Select(e => (e.Kind, e.State)));
        Assert.Equal((0.5, "half way"), (all[2].Progress, all[2].Message));
        Assert.Equal(0.5, all[3].Progress);
        Assert.Equal([4L, 5], (await store.ReadEventsAsync(job.Id, Alice, 3)).Select(e => e.Sequence));
        Assert.Equal([2L, 3], (await store.ReadEventsAsync(job.Id, Alice, 1, max: 2)).Select(e => e.Sequence));
        Assert.Empty(await store.ReadEventsAsync(job.Id, Alice, 5));
        Assert.Equal(5, (await store.GetAsync(job.Id, Alice)).LastEventSequence);
        await Refused(JobStoreError.InvalidArgument, () => store.ReadEventsAsync(job.Id, Alice, -1));
        await Refused(JobStoreError.InvalidArgument, () => store.ReadEventsAsync(job.Id, Alice, 0, max: 0));
    }

    [Fact]
    public async Task Watch_follows_a_job_to_its_final_event()
    {
        await using var store = await NewStoreAsync();
        var job = await store.SubmitAsync(Job("alice"));
        var seen = new List<JobEventRecord>();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var watching = Task.Run(async () =>
        {
            await foreach (var e in store.WatchAsync(job.Id, Alice, 0, TimeSpan.FromMilliseconds(20), timeout.Token))
                seen.Add(e);
        });
        var lease = await store.TakeAsync("w", Lease);
        for (int i = 1; i <= 3; i++)
            await store.ReportProgressAsync(lease!, i / 4.0, $"step {i}");
        await store.CompleteAsync(lease!, JobOutcome.Succeeded("{}"));
        await watching;
        Assert.Equal(Enumerable.Range(1, 6).Select(i => (long)i), seen.Select(e => e.Sequence));
        Assert.Equal(JobState.Succeeded, seen[^1].State);
        await Refused(JobStoreError.InvalidArgument, async () =>
        {
            await foreach (var _ in store.WatchAsync(job.Id, Alice, 0, TimeSpan.Zero))
            {
            }
        });
    }

    [Fact]
    public async Task Cancel_ends_a_queued_job_at_once_and_only_for_its_owner_or_an_admin()
    {
        await using var store = await NewStoreAsync();
        var job = await store.SubmitAsync(Job("alice"));
        var e = await Refused(JobStoreError.PermissionDenied, () => store.CancelAsync(job.Id, Bob));
        Assert.Contains("only its owner or an admin may cancel", e.Message, StringComparison.Ordinal);
        await Refused(JobStoreError.NotFound, () => store.CancelAsync("job-ffffffffffffffff", Admin));

        var cancelled = await store.CancelAsync(job.Id, Alice);
        Assert.Equal((JobState.Cancelled, "CANCELLED", "alice"), (cancelled.State, cancelled.ErrorCode, cancelled.CancelledBy));
        Assert.Contains("cancelled by alice while it was queued", cancelled.Error, StringComparison.Ordinal);
        Assert.Null(await store.TakeAsync("w", Lease));
        // Cancelling a final job changes nothing.
        var again = await store.CancelAsync(job.Id, Admin);
        Assert.Equal((JobState.Cancelled, "alice", cancelled.LastEventSequence), (again.State, again.CancelledBy, again.LastEventSequence));
    }

    [Fact]
    public async Task Cancel_of_a_running_job_reaches_its_worker_at_the_next_heartbeat()
    {
        await using var store = await NewStoreAsync();
        var job = await store.SubmitAsync(Job("alice"));
        var lease = await store.TakeAsync("w", Lease);
        var marked = await store.CancelAsync(job.Id, Admin);
        Assert.Equal((JobState.Running, true, "ops"), (marked.State, marked.CancelRequested, marked.CancelledBy));
        Assert.Equal(LeaseStatus.CancelRequested, await store.HeartbeatAsync(lease!));
        Assert.True(await store.CompleteAsync(lease!, JobOutcome.Cancelled("cancelled by ops")));
        var done = await store.GetAsync(job.Id, Alice);
        Assert.Equal((JobState.Cancelled, "CANCELLED"), (done.State, done.ErrorCode));
        var events = await store.ReadEventsAsync(job.Id, Alice, 0);
        Assert.Contains(events, e => e.Kind == JobEventKind.Log && e.Message == "cancellation requested by ops");
    }

    [Fact]
    public async Task A_released_job_is_queued_again_at_once_without_using_an_attempt_and_a_cancelled_one_ends()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock, maxAttempts: 1);
        var job = await store.SubmitAsync(Job("alice"));
        var first = await store.TakeAsync("w1", Lease);
        Assert.True(await store.ReleaseAsync(first!, "worker w1 is stopping"));
        var queued = await store.GetAsync(job.Id, Alice);
        Assert.Equal((JobState.Queued, 0, "re-queued: worker w1 is stopping"), (queued.State, queued.Attempts, queued.Message));
        // The lease is gone: the releasing worker can neither beat, complete nor release again.
        Assert.Equal(LeaseStatus.Lost, await store.HeartbeatAsync(first!));
        Assert.False(await store.CompleteAsync(first!, JobOutcome.Succeeded("{}")));
        Assert.False(await store.ReleaseAsync(first!, "again"));

        // With one attempt allowed, the hand-back did not use it: the next take may still lose its lease once.
        var second = await store.TakeAsync("w2", Lease);
        Assert.Equal((job.Id, 1), (second!.Job.Id, second.Job.Attempts));
        await store.CancelAsync(job.Id, Bob with { IsAdmin = true });
        Assert.True(await store.ReleaseAsync(second, "worker w2 is stopping"));
        var done = await store.GetAsync(job.Id, Alice);
        Assert.Equal((JobState.Cancelled, "CANCELLED"), (done.State, done.ErrorCode));
        Assert.Contains("cancelled by bob", done.Error, StringComparison.Ordinal);
        Assert.Null(await store.TakeAsync("w3", Lease));
        await Refused(JobStoreError.InvalidArgument, () => store.ReleaseAsync(second, " "));
    }

    [Fact]
    public async Task A_finished_job_from_elsewhere_is_imported_once_with_its_result_and_never_queued()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        var created = clock.GetUtcNow().AddHours(-2);
        var old = new JobInfo
        {
            Id = "job-0123456789abcdef", Owner = "alice", Plugin = "probing", Model = "tiny", ParametersJson = """{"layer":1}""",
            State = JobState.Succeeded, Created = created, Started = created.AddSeconds(1), Finished = created.AddSeconds(9),
            Progress = 1, Message = "done", ResultJson = """{"summaryJson":"{}"}""", Attempts = 1,
        };
        Assert.True(await store.ImportFinishedAsync(old, "imported from the gateway's job files"));
        Assert.False(await store.ImportFinishedAsync(old with { ResultJson = "{}" }, "again"));
        var stored = await store.GetAsync(old.Id, Alice);
        Assert.Equal((JobState.Succeeded, """{"summaryJson":"{}"}""", created.AddSeconds(9).ToUnixTimeMilliseconds()),
            (stored.State, stored.ResultJson, stored.Finished!.Value.ToUnixTimeMilliseconds()));
        Assert.Equal("imported from the gateway's job files", (await store.ReadEventsAsync(old.Id, Alice, 0)).Single().Message);
        Assert.Null(await store.TakeAsync("w", Lease));
        Assert.Equal(old.Id, (await store.ListAsync(new JobListQuery(Alice))).Jobs.Single().Id);

        var e = await Refused(JobStoreError.InvalidArgument, () => store.ImportFinishedAsync(old with { Id = "job-1", State = JobState.Running }, "x"));
        Assert.Contains("only a final job can be imported", e.Message, StringComparison.Ordinal);
        await Refused(JobStoreError.InvalidArgument, () => store.ImportFinishedAsync(old with { Id = "job-2", Owner = "" }, "x"));
    }

    [Fact]
    public async Task A_cancelled_job_whose_worker_vanished_ends_cancelled_not_requeued()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        var job = await store.SubmitAsync(Job("alice"));
        await store.TakeAsync("w", TimeSpan.FromSeconds(10));
        await store.CancelAsync(job.Id, Alice);
        clock.Advance(TimeSpan.FromSeconds(11));
        Assert.Equal(1, await store.RequeueExpiredAsync());
        var done = await store.GetAsync(job.Id, Alice);
        Assert.Equal((JobState.Cancelled, 1), (done.State, done.Attempts));
        Assert.Null(await store.TakeAsync("w2", Lease));
    }

    [Fact]
    public async Task Usage_adds_up_per_job_and_per_key_and_outlives_pruned_jobs()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock, maxAttempts: 2);
        var job = await store.SubmitAsync(Job("alice"));
        await store.SubmitAsync(Job("alice"));
        await store.SubmitAsync(Job("bob"));
        var lease = await store.TakeAsync("w", TimeSpan.FromSeconds(10));
        Assert.Equal(job.Id, lease!.Job.Id);
        Assert.Equal(LeaseStatus.Held, await store.RecordUsageAsync(lease, new JobUsage(3, 300, TimeSpan.FromMilliseconds(1500))));
        // A worker that lost its lease still spent what it reports.
        clock.Advance(TimeSpan.FromSeconds(11));
        await store.RequeueExpiredAsync();
        Assert.Equal(LeaseStatus.Lost, await store.RecordUsageAsync(lease, new JobUsage(1, 100, TimeSpan.FromMilliseconds(500))));

        Assert.Equal(new JobUsage(4, 400, TimeSpan.FromSeconds(2)), (await store.GetAsync(job.Id, Alice)).Usage);
        var second = await store.TakeAsync("w", Lease);
        Assert.Equal("bob", second!.Job.Owner);
        await store.RecordUsageAsync(second, new JobUsage(1, 10, TimeSpan.FromMilliseconds(20)));
        await store.CompleteAsync(second, JobOutcome.Succeeded("{}"));
        Assert.Equal(1, await store.PruneAsync(clock.GetUtcNow().AddDays(1), keepNewest: 0));

        var usage = await store.UsageAsync();
        Assert.Equal(
            [new KeyUsage("alice", 2, new JobUsage(4, 400, TimeSpan.FromSeconds(2))), new KeyUsage("bob", 1, new JobUsage(1, 10, TimeSpan.FromMilliseconds(20)))],
            usage);
        await Refused(JobStoreError.InvalidArgument, () => store.RecordUsageAsync(second, new JobUsage(-1, 0, TimeSpan.Zero)));
        await Refused(JobStoreError.NotFound, () => store.RecordUsageAsync(second, new JobUsage(1, 0, TimeSpan.Zero)));
    }

    // ---- retention and schema --------------------------------------------------------------------

    [Fact]
    public async Task Prune_deletes_old_and_excess_final_jobs_and_never_active_ones()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        var finished = new List<string>();
        for (int i = 0; i < 4; i++)
        {
            var job = await store.SubmitAsync(Job("alice"));
            var lease = await store.TakeAsync("w", Lease);
            await store.CompleteAsync(lease!, JobOutcome.Succeeded("{}"));
            finished.Add(job.Id);
            clock.Advance(TimeSpan.FromHours(1));
        }
        var queued = await store.SubmitAsync(Job("alice"));
        await store.SubmitAsync(Job("bob"));
        await store.TakeAsync("w", Lease);

        // Older than 2.5 hours: the first two (finished 4 h and 3 h ago).
        Assert.Equal(2, await store.PruneAsync(clock.GetUtcNow() - TimeSpan.FromHours(2.5), keepNewest: 100));
        await Refused(JobStoreError.NotFound, () => store.GetAsync(finished[0], Alice));
        await Refused(JobStoreError.NotFound, () => store.ReadEventsAsync(finished[1], Admin, 0));
        // Beyond the newest one.
        Assert.Equal(1, await store.PruneAsync(DateTimeOffset.MinValue.AddYears(2000), keepNewest: 1));
        Assert.Equal(finished[3], (await store.GetAsync(finished[3], Alice)).Id);
        Assert.Equal(1, await store.PruneAsync(clock.GetUtcNow().AddDays(1), keepNewest: 0));
        Assert.Equal(JobState.Queued, (await store.GetAsync(queued.Id, Alice)).State);
        Assert.Equal(new JobCounts(1, 1), await store.CountAsync());
        await Refused(JobStoreError.InvalidArgument, () => store.PruneAsync(DateTimeOffset.UtcNow, -1));
    }

    [Fact]
    public async Task Migrations_are_recorded_applied_once_and_a_newer_schema_is_refused()
    {
        string database = await CreateDatabaseAsync();
        var options = new JobStoreOptions { Clock = new ManualClock() };
        await using (var store = await OpenAsync(database, options))
        {
            int latest = store.Migrations().Count;
            Assert.True(latest >= 1);
            Assert.Equal(latest, await store.SchemaVersionAsync());
            await store.SubmitAsync(Job("alice"));
            Assert.Empty(await store.MigrateAsync());
        }
        await using (var reopened = await OpenAsync(database, options))
        {
            // Reopening keeps the data and applies nothing.
            Assert.Single((await reopened.ListAsync(new JobListQuery(Admin))).Jobs);
            await ExecuteRawAsync(database, "INSERT INTO interpmesh_schema_version (version, name, applied_ms) VALUES (999, 'from_the_future', 0)");
        }
        var e = await Refused(JobStoreError.Unavailable, () => OpenAsync(database, options));
        Assert.Contains("version 999, newer than this build knows", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_database_at_an_older_schema_is_upgraded_keeping_its_jobs()
    {
        IReadOnlyList<(int Version, string Name, string Sql)> migrations;
        await using (var probe = await OpenAsync(await CreateDatabaseAsync(), new JobStoreOptions()))
            migrations = probe.Migrations();
        Assert.True(migrations.Count >= 2, "this test needs a migration after the first");

        // A database as the first release left it: schema version 1 and a queued job.
        string database = await CreateDatabaseAsync();
        await ExecuteRawAsync(database, migrations[0].Sql);
        await ExecuteRawAsync(database, "CREATE TABLE interpmesh_schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_ms bigint NOT NULL)");
        await ExecuteRawAsync(database, "INSERT INTO interpmesh_schema_version (version, name, applied_ms) VALUES (1, 'jobs', 0)");
        await ExecuteRawAsync(database, "INSERT INTO job_owners (owner, last_take) VALUES ('alice', 0)");
        await ExecuteRawAsync(database,
            "INSERT INTO jobs (id, owner, plugin, model, parameters_json, timeout_seconds, trace_parent, state, created_ms) VALUES ('job-from-v1', 'alice', 'probing', 'tiny', '{}', 0, '', 'queued', 0)");

        await using var store = await OpenAsync(database, new JobStoreOptions { Clock = new ManualClock() });
        Assert.Equal(migrations.Count, await store.SchemaVersionAsync());
        await store.SetRunningLimitAsync("alice", 2);
        var lease = await store.TakeAsync("w", Lease);
        Assert.Equal("job-from-v1", lease!.Job.Id);
    }

    // ---- the plugin catalog -----------------------------------------------------------------------

    private static PublishedPlugin Loaded(string id, string version = "1.0.0") =>
        new(id, id, true, null, $$"""{"version":"{{version}}","description":"d","sdkVersion":"2.0","parameterSchema":{"type":"object"},"produces":[]}""");

    [Fact]
    public async Task Gateways_are_counted_while_their_stamps_are_fresh_and_leave_when_they_stop()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        var fresh = TimeSpan.FromSeconds(20);
        Assert.Equal(1, await store.HeartbeatGatewayAsync("gw-a", fresh));
        Assert.Equal(2, await store.HeartbeatGatewayAsync("gw-b", fresh));
        // Stamping again counts a gateway once.
        Assert.Equal(2, await store.HeartbeatGatewayAsync("gw-a", fresh));
        Assert.Equal(3, await store.HeartbeatGatewayAsync("gw-c", fresh));
        // gw-b stops cleanly; gw-c dies and its stamp grows old while gw-a keeps stamping.
        await store.LeaveGatewayAsync("gw-b");
        clock.Advance(TimeSpan.FromSeconds(15));
        Assert.Equal(2, await store.HeartbeatGatewayAsync("gw-a", fresh));
        clock.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(1, await store.HeartbeatGatewayAsync("gw-a", fresh));
        // Leaving twice, or a gateway never seen, is no error.
        await store.LeaveGatewayAsync("gw-b");
        await store.LeaveGatewayAsync("never-seen");
        await Assert.ThrowsAsync<JobStoreException>(() => store.HeartbeatGatewayAsync(" ", fresh));
        await Assert.ThrowsAsync<JobStoreException>(() => store.HeartbeatGatewayAsync("gw-a", TimeSpan.Zero));
    }

    [Fact]
    public async Task Published_plugins_are_listed_one_per_id_preferring_loaded_then_newest()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        await store.PublishPluginsAsync("w1", [Loaded("probing", "1.0.0"), new PublishedPlugin("broken", "broken", false, "no plugin.json", null)]);
        clock.Advance(TimeSpan.FromSeconds(1));
        await store.PublishPluginsAsync("w2", [Loaded("probing", "1.1.0"), Loaded("sae"), new PublishedPlugin("steering", "steering", false, "bad dll", null)]);
        clock.Advance(TimeSpan.FromSeconds(1));
        await store.PublishPluginsAsync("w3", [new PublishedPlugin("sae", "sae", false, "crashed", null)]);

        var listed = await store.ListPluginsAsync(TimeSpan.FromMinutes(3));
        Assert.Equal(["broken", "probing", "sae", "steering"], listed.Select(p => p.Id));
        var probing = listed.Single(p => p.Id == "probing");
        Assert.Equal(("w2", true), (probing.WorkerId, probing.Loaded));
        Assert.Contains("1.1.0", probing.ManifestJson, StringComparison.Ordinal);
        Assert.Equal(clock.GetUtcNow() - TimeSpan.FromSeconds(1), probing.Updated);
        // A worker that has it loaded wins over a newer one that failed: the job can run there.
        Assert.Equal(("w2", true), listed.Single(p => p.Id == "sae") is var sae ? (sae.WorkerId, sae.Loaded) : default);
        var broken = listed.Single(p => p.Id == "broken");
        Assert.Equal((false, "no plugin.json", (string?)null), (broken.Loaded, broken.Error, broken.ManifestJson));
    }

    [Fact]
    public async Task A_worker_not_seen_recently_drops_out_and_a_new_publish_replaces_the_old_one()
    {
        var clock = new ManualClock();
        await using var store = await NewStoreAsync(clock);
        await store.PublishPluginsAsync("old", [Loaded("probing"), Loaded("sae")]);
        clock.Advance(TimeSpan.FromMinutes(2));
        await store.PublishPluginsAsync("new", [Loaded("steering")]);
        Assert.Equal(["steering"], (await store.ListPluginsAsync(TimeSpan.FromMinutes(1))).Select(p => p.Id));
        Assert.Equal(["probing", "sae", "steering"], (await store.ListPluginsAsync(TimeSpan.FromMinutes(3))).Select(p => p.Id));

        // The heartbeat: the old worker publishes again, without sae now.
        await store.PublishPluginsAsync("old", [Loaded("probing")]);
        Assert.Equal(["probing", "steering"], (await store.ListPluginsAsync(TimeSpan.FromMinutes(1))).Select(p => p.Id));
        // A stopping worker withdraws.
        await store.PublishPluginsAsync("old", []);
        Assert.Equal(["steering"], (await store.ListPluginsAsync(TimeSpan.FromMinutes(3))).Select(p => p.Id));
    }

    [Fact]
    public async Task Publishing_refuses_what_readers_could_not_use()
    {
        await using var store = await NewStoreAsync();
        Assert.Contains("worker id", (await Refused(JobStoreError.InvalidArgument, () => store.PublishPluginsAsync(" ", [Loaded("probing")]))).Message, StringComparison.Ordinal);
        Assert.Contains("twice", (await Refused(JobStoreError.InvalidArgument, () => store.PublishPluginsAsync("w", [Loaded("probing"), Loaded("probing")]))).Message, StringComparison.Ordinal);
        Assert.Contains("manifest", (await Refused(JobStoreError.InvalidArgument, () => store.PublishPluginsAsync("w", [new PublishedPlugin("x", "x", true, null, null)]))).Message, StringComparison.Ordinal);
        Assert.Empty(await store.ListPluginsAsync(TimeSpan.FromMinutes(1)));
    }
}
