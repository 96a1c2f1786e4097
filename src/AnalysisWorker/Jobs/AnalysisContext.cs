using System.Diagnostics.Metrics;
using InterpMesh.Plugins;

namespace InterpMesh.AnalysisWorker.Jobs;

/// <summary>The SDK context of one run; progress goes to the job store through the run's <see cref="JobReporter"/>.</summary>
internal sealed class AnalysisContext(string jobId, IModelClient model, IArtifactStore artifacts, ILogger logger, Meter meter, JobReporter reporter, CancellationToken cancellation) : IAnalysisContext
{
    public string JobId => jobId;
    public IModelClient Model => model;
    public IArtifactStore Artifacts => artifacts;
    public CancellationToken Cancellation => cancellation;
    public ILogger Logger => logger;
    public Meter Meter => meter;

    public void ReportProgress(double fraction, string message) =>
        reporter.Progress(double.IsFinite(fraction) ? Math.Clamp(fraction, 0, 1) : 0, message ?? "");
}
