using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using InterpMesh.Jobs;
using Wire = InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Jobs;

/// <summary>The job store's records and refusals on the wire: the one place store and proto meet.</summary>
internal static class JobMapping
{
    private static readonly JsonFormatter ResultFormatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));

    /// <summary>A run's result as the worker stores it (protobuf JSON, figures base64): opaque to the store.</summary>
    public static string ResultToJson(Wire.AnalysisResult result) => ResultFormatter.Format(result);

    public static Wire.Job ToWire(JobInfo job, bool withResult = true)
    {
        var wire = new Wire.Job
        {
            Id = job.Id,
            Plugin = job.Plugin,
            Model = job.Model,
            State = ToWire(job.State),
            Progress = job.Progress,
            Message = job.Message,
            Error = job.Error,
            ErrorCode = job.ErrorCode,
            ErrorStatus = ErrorStatus(job.ErrorCode),
            Created = Timestamp.FromDateTimeOffset(job.Created),
            Owner = job.Owner,
            ParametersJson = job.ParametersJson,
            Attempts = job.Attempts,
        };
        if (job.Started is { } started)
            wire.Started = Timestamp.FromDateTimeOffset(started);
        if (job.Finished is { } finished)
            wire.Finished = Timestamp.FromDateTimeOffset(finished);
        if (withResult && job.ResultJson is { } result)
            wire.Result = Wire.AnalysisResult.Parser.ParseJson(result);
        return wire;
    }

    /// <summary>
    /// The enum of a stored status name (INVALID_ARGUMENT → <see cref="Wire.JobErrorCode.InvalidArgument"/>):
    /// the same gRPC code. Empty (no error) is unspecified; a name that is no gRPC code (never
    /// written by a worker, but an imported record may hold anything) is UNKNOWN, as gRPC maps an
    /// unknown status.
    /// </summary>
    public static Wire.JobErrorCode ErrorStatus(string? name) =>
        string.IsNullOrEmpty(name) ? Wire.JobErrorCode.Unspecified
        : ErrorStatuses.TryGetValue(name, out var code) ? code : Wire.JobErrorCode.Unknown;

    /// <summary>Status names (INVALID_ARGUMENT, …) to the enum, read once from the proto's own value names.</summary>
    private static readonly Dictionary<string, Wire.JobErrorCode> ErrorStatuses =
        Wire.AnalysisServiceReflection.Descriptor.EnumTypes.Single(e => e.Name == nameof(Wire.JobErrorCode)).Values
            .Where(v => v.Number != 0)
            .ToDictionary(v => v.Name["JOB_ERROR_CODE_".Length..], v => (Wire.JobErrorCode)v.Number, StringComparer.Ordinal);

    public static Wire.JobState ToWire(JobState state) => state switch
    {
        JobState.Queued => Wire.JobState.Queued,
        JobState.Running => Wire.JobState.Running,
        JobState.Succeeded => Wire.JobState.Succeeded,
        JobState.Failed => Wire.JobState.Failed,
        JobState.Cancelled => Wire.JobState.Cancelled,
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "not a job state"),
    };

    /// <summary>A non-final event as the watch stream's progress message (state changes and log lines included: the message says which).</summary>
    public static Wire.Progress ToProgress(JobEventRecord e) =>
        new() { JobId = e.JobId, State = ToWire(e.State), Fraction = e.Progress, Message = e.Message };

    /// <summary>A store refusal as the gRPC status a client acts on, with the store's message (it says what to fix).</summary>
    public static RpcException ToRpc(JobStoreException e, TimeSpan queueFullPushback) => e.Error switch
    {
        JobStoreError.NotFound => new RpcException(new Status(StatusCode.NotFound, e.Message)),
        JobStoreError.PermissionDenied => new RpcException(new Status(StatusCode.PermissionDenied, e.Message)),
        JobStoreError.InvalidArgument => new RpcException(new Status(StatusCode.InvalidArgument, e.Message)),
        // The shared queue drains as anyone's jobs start: worth retrying after a while. A key's own
        // quota frees only when one of its jobs ends (minutes, or never without a cancel): a
        // transparent retry would hold the call and most likely fail again.
        JobStoreError.ResourceExhausted => new RpcException(new Status(StatusCode.ResourceExhausted, e.Message),
            e.WorthRetrying ? Contracts.RetryPushback.After(queueFullPushback) : Contracts.RetryPushback.Never()),
        _ => new RpcException(new Status(StatusCode.Unavailable, $"the job store is unavailable: {e.Message}")),
    };
}
