namespace InterpMesh.Jobs.Tests;

/// <summary>The lease keeper when the database cannot be reached (the stores' suite covers it against real ones).</summary>
public sealed class LeaseKeeperTests
{
    [Fact]
    public async Task Failing_heartbeats_count_as_a_lost_lease_once_a_whole_lease_has_passed()
    {
        var queue = new FlakyQueue(failures: int.MaxValue, then: LeaseStatus.Held);
        var started = DateTime.UtcNow;
        await using var keeper = LeaseKeeper.Start(queue, Lease(TimeSpan.FromMilliseconds(600)));
        await Stopped(keeper);
        Assert.True(DateTime.UtcNow - started >= TimeSpan.FromMilliseconds(600), "failed beats must not give the lease up before its duration");
        Assert.Equal(LeaseStatus.Lost, keeper.Status);
        Assert.IsType<TimeoutException>(keeper.LastError);
    }

    [Fact]
    public async Task A_failed_heartbeat_is_retried_at_the_next_beat()
    {
        // The first beat fails; the next reaches the store and learns the job was cancelled.
        var queue = new FlakyQueue(failures: 1, then: LeaseStatus.CancelRequested);
        await using var keeper = LeaseKeeper.Start(queue, Lease(TimeSpan.FromSeconds(3)));
        await Stopped(keeper);
        Assert.Equal(LeaseStatus.CancelRequested, keeper.Status);
        Assert.True(queue.Beats >= 2, $"expected the failed beat and a retry, saw {queue.Beats}");
        Assert.Null(keeper.LastError);
    }

    private static JobLease Lease(TimeSpan duration) =>
        new(new JobInfo { Id = "job-1", Owner = "alice", Plugin = "probing", Model = "tiny", ParametersJson = "{}", State = JobState.Running },
            "w", "token", DateTimeOffset.UtcNow + duration, duration);

    private static async Task Stopped(LeaseKeeper keeper)
    {
        var stopped = new TaskCompletionSource();
        using var registration = keeper.Stopping.Register(() => stopped.TrySetResult());
        await stopped.Task.WaitAsync(TimeSpan.FromSeconds(20));
    }

    /// <summary>A queue whose first <c>failures</c> heartbeats time out; later ones answer <c>then</c>.</summary>
    private sealed class FlakyQueue(int failures, LeaseStatus then) : IJobQueue
    {
        private int beats;

        public int Beats => Volatile.Read(ref beats);

        public Task<LeaseStatus> HeartbeatAsync(JobLease lease, CancellationToken cancellationToken = default) =>
            Interlocked.Increment(ref beats) <= failures ? throw new TimeoutException("the database did not answer") : Task.FromResult(then);

        public Task<JobLease?> TakeAsync(string workerId, TimeSpan leaseDuration, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<LeaseStatus> ReportProgressAsync(JobLease lease, double fraction, string message, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<LeaseStatus> AppendLogAsync(JobLease lease, string message, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<bool> CompleteAsync(JobLease lease, JobOutcome outcome, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<int> RequeueExpiredAsync(CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<bool> ReleaseAsync(JobLease lease, string reason, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<LeaseStatus> RecordUsageAsync(JobLease lease, JobUsage used, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
    }
}
