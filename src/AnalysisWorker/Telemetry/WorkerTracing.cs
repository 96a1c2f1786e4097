using System.Diagnostics;

namespace InterpMesh.AnalysisWorker.Telemetry;

/// <summary>The worker's own spans (source <c>InterpMesh.Worker</c>): one <c>interpmesh.job</c> per analysis run, in the submitting call's trace.</summary>
public static class WorkerTracing
{
    public const string SourceName = "InterpMesh.Worker";

    public static ActivitySource Source { get; } = new(SourceName);
}
