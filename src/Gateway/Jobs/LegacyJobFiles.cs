using Google.Protobuf;
using InterpMesh.Jobs;
using Wire = InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Jobs;

/// <summary>
/// The move from the per-pod job files of gateways before the shared store: each <c>job-*.json</c>
/// in the jobs folder is imported into the store once (finished records with their results; a
/// record left queued, running or interrupted by a stopped gateway as FAILED, UNAVAILABLE, "submit
/// it again", as that gateway would have marked it) and moved to <c>imported/</c>. A file that
/// cannot be read stays where it is, with its reason in the log.
/// </summary>
internal static class LegacyJobFiles
{
    public const string ImportedFolder = "imported";

    public static async Task<int> ImportAsync(SqlJobStore store, string folder, ILogger logger, CancellationToken ct = default)
    {
        if (!Directory.Exists(folder))
            return 0;
        var records = new List<(string File, Wire.Job Job)>();
        foreach (var file in Directory.EnumerateFiles(folder, "job-*.json"))
        {
            try
            {
                records.Add((file, JsonParser.Default.Parse<Wire.Job>(await File.ReadAllTextAsync(file, ct))));
            }
            catch (Exception e) when (e is InvalidProtocolBufferException or InvalidJsonException or IOException)
            {
                logger.LogError("The old job record {File} cannot be read, so it is not imported: {Message}", file, e.Message);
            }
        }
        int imported = 0;
        string done = Path.Combine(folder, ImportedFolder);
        // Oldest first, so the store lists them in the order they were created.
        foreach (var (file, job) in records.OrderBy(r => r.Job.Created?.ToDateTimeOffset() ?? DateTimeOffset.MinValue))
        {
            try
            {
                if (await store.ImportFinishedAsync(ToInfo(job), "imported from the job files of a gateway before the shared job store", ct))
                    imported++;
                Directory.CreateDirectory(done);
                File.Move(file, Path.Combine(done, Path.GetFileName(file)), overwrite: true);
            }
            catch (JobStoreException e)
            {
                logger.LogError("The old job record {File} is not imported: {Message}", file, e.Message);
            }
        }
        return imported;
    }

    internal static JobInfo ToInfo(Wire.Job job)
    {
        var created = job.Created?.ToDateTimeOffset() ?? DateTimeOffset.UnixEpoch;
        var (state, error, code) = job.State switch
        {
            Wire.JobState.Succeeded => (JobState.Succeeded, job.Error, job.ErrorCode),
            Wire.JobState.Failed => (JobState.Failed, job.Error, job.ErrorCode),
            Wire.JobState.Cancelled => (JobState.Cancelled, job.Error, job.ErrorCode.Length > 0 ? job.ErrorCode : "CANCELLED"),
            Wire.JobState.Interrupted => (JobState.Failed, job.Error.Length > 0 ? job.Error : "the gateway stopped before the job finished; submit it again", "UNAVAILABLE"),
            _ => (JobState.Failed, "the gateway stopped before the job finished; submit it again", "UNAVAILABLE"),
        };
        return new JobInfo
        {
            Id = job.Id,
            Owner = job.Owner.Length > 0 ? job.Owner : "anonymous",
            Plugin = job.Plugin,
            Model = job.Model,
            ParametersJson = job.ParametersJson.Length > 0 ? job.ParametersJson : "{}",
            State = state,
            Created = created,
            Started = job.Started?.ToDateTimeOffset(),
            Finished = job.Finished?.ToDateTimeOffset() ?? created,
            Progress = job.Progress,
            Message = JobStates.ToStored(state),
            Error = error,
            ErrorCode = code,
            ResultJson = state == JobState.Succeeded && job.Result is { } result ? JobMapping.ResultToJson(result) : null,
            Attempts = job.Started is null ? 0 : 1,
        };
    }
}
