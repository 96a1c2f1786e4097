using System.Threading.Channels;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Jobs;

/// <summary>A job's live state: its record (guarded by a lock), its watchers and its cancellation.</summary>
public sealed class JobRecord
{
    private readonly Lock gate = new();
    private readonly List<Channel<JobEvent>> watchers = [];
    private readonly Job job;
    private readonly TaskCompletionSource finished = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public JobRecord(Job job)
    {
        this.job = job;
        if (IsFinal(job.State))
            finished.TrySetResult();
    }

    public string Id => job.Id;

    /// <summary>Set by CancelJob (or a RunAnalysis client leaving).</summary>
    public CancellationTokenSource Cancel { get; } = new();

    /// <summary>Trace context of the call that submitted the job: the run's spans (and its model calls) join that trace.</summary>
    public System.Diagnostics.ActivityContext Trace { get; init; }

    /// <summary>The run's time limit.</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromHours(1);

    /// <summary>Who cancelled, for the record.</summary>
    public string? CancelledBy { get; set; }

    public Task Finished => finished.Task;

    public static bool IsFinal(JobState s) => s is JobState.Succeeded or JobState.Failed or JobState.Cancelled or JobState.Interrupted;

    /// <summary>A copy of the record, safe to send or persist.</summary>
    public Job Snapshot(bool withResult = true)
    {
        lock (gate)
        {
            var copy = job.Clone();
            if (!withResult)
                copy.Result = null;
            return copy;
        }
    }

    public JobState State
    {
        get
        {
            lock (gate)
                return job.State;
        }
    }

    public string Owner => job.Owner;

    /// <summary>Changes the record; tells watchers (progress, or the final record when the job ends).</summary>
    public void Update(Action<Job> change)
    {
        JobEvent message;
        bool final;
        lock (gate)
        {
            if (IsFinal(job.State))
                return;
            change(job);
            final = IsFinal(job.State);
            message = final ? new JobEvent { Finished = job.Clone() }
                : new JobEvent { Progress = new Progress { JobId = job.Id, State = job.State, Fraction = job.Progress, Message = job.Message } };
            foreach (var w in watchers)
            {
                w.Writer.TryWrite(message);
                if (final)
                    w.Writer.TryComplete();
            }
            if (final)
                watchers.Clear();
        }
        if (final)
            finished.TrySetResult();
    }

    /// <summary>Events from now on; the final record last. A finished job yields just its record.</summary>
    public ChannelReader<JobEvent> Watch()
    {
        // Progress may be dropped for a slow watcher (the oldest first); the final record never is.
        var channel = Channel.CreateBounded<JobEvent>(new BoundedChannelOptions(64) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true });
        lock (gate)
        {
            if (IsFinal(job.State))
            {
                channel.Writer.TryWrite(new JobEvent { Finished = job.Clone() });
                channel.Writer.TryComplete();
            }
            else
            {
                channel.Writer.TryWrite(new JobEvent { Progress = new Progress { JobId = job.Id, State = job.State, Fraction = job.Progress, Message = job.Message } });
                watchers.Add(channel);
            }
        }
        return channel.Reader;
    }

    public void Unwatch(ChannelReader<JobEvent> reader)
    {
        lock (gate)
            watchers.RemoveAll(w => w.Reader == reader);
    }
}
