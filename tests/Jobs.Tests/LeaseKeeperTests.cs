namespace InterpMesh.Jobs.Tests;

/// <summary>The lease keeper when the database cannot be reached (the stores' suite covers it against real ones).</summary>
public sealed class LeaseKeeperTests
{
    [Fact]
    public async Task Failing_heartbeats_count_as_a_lost_lease_once_a_whole_lease_has_passed()
    {
        var queue = new UnreachableQueue();
        var job = new JobInfo { Id = "job-1", Owner = "alice", Plugin = "probing", Model = "tiny", ParametersJson = "{}", State = JobState.Running };
        var lease = new JobLease(job, "w", "token", DateTimeOffset.UtcNow, TimeSpan.FromMilliseconds(300));
        var started = DateTime.UtcNow;
        await using var keeper = LeaseKeeper.Start(queue, lease);

        var stopped = new TaskCompletionSource();
        using var registration = keeper.Stopping.Register(() => stopped.TrySetResult());
        await stopped.Task.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.True(DateTime.UtcNow - started >= TimeSpan.FromMilliseconds(300), "a failed beat must not give the lease up before its duration");
        Assert.True(queue.Beats >= 2, $"a failed beat must be retried at the next one, saw {queue.Beats} beat(s)");
        Assert.Equal(LeaseStatus.Lost, keeper.Status);
        Assert.IsType<TimeoutException>(keeper.LastError);
    }

    private sealed class UnreachableQueue : IJobQueue
    {
        private int beats;

        public int Beats => Volatile.Read(ref beats);

        public Task<LeaseStatus> HeartbeatAsync(JobLease lease, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref beats);
            throw new TimeoutException("the database did not answer");
        }

        public Task<JobLease?> TakeAsync(string workerId, TimeSpan leaseDuration, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<LeaseStatus> ReportProgressAsync(JobLease lease, double fraction, string message, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<LeaseStatus> AppendLogAsync(JobLease lease, string message, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<bool> CompleteAsync(JobLease lease, JobOutcome outcome, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<int> RequeueExpiredAsync(CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
        public Task<LeaseStatus> RecordUsageAsync(JobLease lease, JobUsage used, CancellationToken cancellationToken = default) => throw new InvalidOperationException("the keeper only heartbeats");
    }
}
