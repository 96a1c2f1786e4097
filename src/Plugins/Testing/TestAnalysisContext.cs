using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace InterpMesh.Plugins.Testing;

/// <summary>
/// An <see cref="IAnalysisContext"/> for unit tests: it records every progress report and log
/// message so a test can assert on them, and keeps artifacts in memory unless given a store.
/// Progress fractions are clamped to [0, 1] as the gateway does.
/// </summary>
public sealed class TestAnalysisContext : IAnalysisContext, IDisposable
{
    private readonly ConcurrentQueue<ProgressReport> progress = new();
    private readonly ConcurrentQueue<LogEntry> logs = new();

    /// <summary>A context over <paramref name="model"/>.</summary>
    /// <param name="model">The model the run analyses (for example <see cref="TestModel.Client"/>).</param>
    /// <param name="artifacts">Where artifacts go; by default a new <see cref="InMemoryArtifactStore"/>.</param>
    /// <param name="cancellation">The run's cancellation (the caller's cancel or time limit at the gateway).</param>
    public TestAnalysisContext(IModelClient model, IArtifactStore? artifacts = null, CancellationToken cancellation = default)
    {
        Model = model;
        Artifacts = artifacts ?? new InMemoryArtifactStore();
        Cancellation = cancellation;
        Logger = new RecordingLogger(logs);
        Meter = new Meter("InterpMesh.Plugins.Testing");
    }

    /// <inheritdoc/>
    public string JobId { get; init; } = "test-job";

    /// <inheritdoc/>
    public IModelClient Model { get; }

    /// <inheritdoc/>
    public IArtifactStore Artifacts { get; }

    /// <inheritdoc/>
    public CancellationToken Cancellation { get; }

    /// <inheritdoc/>
    public ILogger Logger { get; }

    /// <inheritdoc/>
    public Meter Meter { get; }

    /// <summary>Every progress report so far, in order.</summary>
    public IReadOnlyList<ProgressReport> Progress => [.. progress];

    /// <summary>Every log message so far, in order.</summary>
    public IReadOnlyList<LogEntry> Logs => [.. logs];

    /// <inheritdoc/>
    public void ReportProgress(double fraction, string message) =>
        progress.Enqueue(new ProgressReport { Fraction = double.IsFinite(fraction) ? Math.Clamp(fraction, 0, 1) : 0, Message = message ?? "" });

    /// <summary>Disposes the meter.</summary>
    public void Dispose() => Meter.Dispose();

    private sealed class RecordingLogger(ConcurrentQueue<LogEntry> entries) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            entries.Enqueue(new LogEntry { Level = logLevel, Message = formatter(state, exception), Exception = exception });
    }
}

/// <summary>One <see cref="IAnalysisContext.ReportProgress"/> call.</summary>
public sealed class ProgressReport
{
    /// <summary>Done so far, 0 to 1.</summary>
    public required double Fraction { get; init; }

    /// <summary>What was happening.</summary>
    public required string Message { get; init; }
}

/// <summary>One message written to <see cref="IAnalysisContext.Logger"/>.</summary>
public sealed class LogEntry
{
    /// <summary>Its level.</summary>
    public required LogLevel Level { get; init; }

    /// <summary>The formatted message.</summary>
    public required string Message { get; init; }

    /// <summary>The exception logged with it, if any.</summary>
    public Exception? Exception { get; init; }
}
