using System.Threading.Channels;
using InterpMesh.Jobs;

namespace InterpMesh.AnalysisWorker.Jobs;

/// <summary>
/// Publishes one run's progress and log lines to the job store in order, off the plugin's thread
/// (the SDK's <c>ReportProgress</c> is synchronous). A plugin reporting faster than the store
/// writes loses its oldest reports, never the last; <see cref="FlushAsync"/> writes what is pending
/// before the run completes, so a watcher sees the last progress before the final record.
/// </summary>
internal sealed class JobReporter : IAsyncDisposable
{
    /// <summary>Log lines one run may add to its job's events; later ones go only to the worker's log.</summary>
    public const int MaxLogLines = 200;

    private readonly IJobQueue queue;
    private readonly JobLease lease;
    private readonly ILogger logger;
    private readonly Channel<(bool Log, double Fraction, string Message)> pending =
        Channel.CreateBounded<(bool, double, string)>(new BoundedChannelOptions(64) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true });
    private readonly Task loop;
    private double fraction;
    private int logLines;

    public JobReporter(IJobQueue queue, JobLease lease, ILogger logger)
    {
        this.queue = queue;
        this.lease = lease;
        this.logger = logger;
        fraction = lease.Job.Progress;
        loop = Task.Run(WriteAsync);
    }

    public void Progress(double value, string message)
    {
        Volatile.Write(ref fraction, value);
        pending.Writer.TryWrite((false, value, message));
    }

    public void Log(string message)
    {
        if (Interlocked.Increment(ref logLines) <= MaxLogLines)
            pending.Writer.TryWrite((true, Volatile.Read(ref fraction), message));
    }

    private async Task WriteAsync()
    {
        await foreach (var (log, value, message) in pending.Reader.ReadAllAsync())
        {
            try
            {
                if (log)
                    await queue.AppendLogAsync(lease, message.Length == 0 ? "(empty log line)" : message);
                else
                    await queue.ReportProgressAsync(lease, value, message);
            }
            catch (Exception e)
            {
                // A report the store does not take (unreachable, the lease lost) is not worth
                // stopping the run for: the lease keeper decides whether the run goes on.
                logger.LogWarning("Job {Job}: a progress report was not stored: {Message}", lease.Job.Id, e.Message);
            }
        }
    }

    /// <summary>Writes the pending reports and stops taking new ones.</summary>
    public async Task FlushAsync()
    {
        pending.Writer.TryComplete();
        await loop;
    }

    public async ValueTask DisposeAsync() => await FlushAsync();
}

/// <summary>A plugin's logger: everything to the worker's log, and warnings and errors also to the job's events (so a watcher sees them).</summary>
internal sealed class JobLogger(ILogger inner, JobReporter reporter) : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => inner.BeginScope(state);

    public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel) || logLevel >= LogLevel.Warning;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (inner.IsEnabled(logLevel))
            inner.Log(logLevel, eventId, state, exception, formatter);
        if (logLevel >= LogLevel.Warning && logLevel != LogLevel.None)
            reporter.Log($"{(logLevel == LogLevel.Warning ? "warning" : "error")}: {formatter(state, exception)}");
    }
}
