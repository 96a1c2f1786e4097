using System.Diagnostics.Metrics;
using InterpMesh.Plugins;

namespace InterpMesh.Gateway.Jobs;

/// <summary>The SDK context of one run.</summary>
internal sealed class AnalysisContext(JobRecord record, IModelClient model, IArtifactStore artifacts, ILogger logger, Meter meter, CancellationToken cancellation) : IAnalysisContext
{
    public string JobId => record.Id;
    public IModelClient Model => model;
    public IArtifactStore Artifacts => artifacts;
    public CancellationToken Cancellation => cancellation;
    public ILogger Logger => logger;
    public Meter Meter => meter;

    public void ReportProgress(double fraction, string message)
    {
        double f = double.IsFinite(fraction) ? Math.Clamp(fraction, 0, 1) : 0;
        record.Update(job =>
        {
            job.Progress = f;
            job.Message = message ?? "";
        });
    }
}
