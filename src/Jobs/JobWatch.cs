using System.Runtime.CompilerServices;

namespace InterpMesh.Jobs;

/// <summary>
/// WatchJob over any store by short polling: read the events after the last one seen, wait
/// <c>pollInterval</c> when there are none, stop after the final state event. Polling keeps both
/// stores alike (SQLite has no notifications) and costs one indexed read per watcher per interval.
/// </summary>
public static class JobWatch
{
    public static readonly TimeSpan DefaultPollInterval = TimeSpan.FromMilliseconds(250);

    public static async IAsyncEnumerable<JobEventRecord> WatchAsync(this IJobStore store, string id, JobCaller caller, long afterSequence, TimeSpan pollInterval,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        if (pollInterval <= TimeSpan.Zero)
            throw new JobStoreException(JobStoreError.InvalidArgument, $"the poll interval must be positive, not {pollInterval}");
        long after = afterSequence;
        while (true)
        {
            var events = await store.ReadEventsAsync(id, caller, after, JobStoreLimits.MaxEventsPerRead, cancellationToken);
            foreach (var e in events)
            {
                yield return e;
                after = e.Sequence;
                if (e.Kind == JobEventKind.State && JobStates.IsFinal(e.State))
                    yield break;
            }
            if (events.Count < JobStoreLimits.MaxEventsPerRead)
                await Task.Delay(pollInterval, cancellationToken);
        }
    }
}
