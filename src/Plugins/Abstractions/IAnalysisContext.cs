using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;

namespace InterpMesh.Plugins;

/// <summary>Everything a run may use. Provided by the gateway; valid only during the run.</summary>
public interface IAnalysisContext
{
    /// <summary>The job this run belongs to.</summary>
    string JobId { get; }

    /// <summary>The model the caller chose.</summary>
    IModelClient Model { get; }

    /// <summary>Where to save and load artifacts (probes, SAEs, vectors, raw data).</summary>
    IArtifactStore Artifacts { get; }

    /// <summary>Fires when the caller cancels or the run's time limit passes; stop promptly and throw <see cref="OperationCanceledException"/>.</summary>
    CancellationToken Cancellation { get; }

    /// <summary>Logger for this run (messages go to the gateway's log with the job id).</summary>
    ILogger Logger { get; }

    /// <summary>A meter for the plugin's own instruments (exported by the gateway with the plugin id as a tag).</summary>
    Meter Meter { get; }

    /// <summary>Reports progress to watching clients.</summary>
    /// <param name="fraction">Done so far, 0 to 1.</param>
    /// <param name="message">What is happening, e.g. <c>probe 3/24: blocks.2.hook_resid_post</c>.</param>
    void ReportProgress(double fraction, string message);
}
