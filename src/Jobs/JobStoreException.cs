namespace InterpMesh.Jobs;

/// <summary>What kind of refusal a <see cref="JobStoreException"/> is; the gateway maps it to a gRPC status.</summary>
public enum JobStoreError
{
    NotFound,
    PermissionDenied,
    InvalidArgument,
    ResourceExhausted,
    /// <summary>The database is not one this build can use (a newer schema, an unreachable server).</summary>
    Unavailable,
}

/// <summary>A request the store refuses; the message says what to fix.</summary>
public sealed class JobStoreException : Exception
{
    public JobStoreException(JobStoreError error, string message, Exception? inner = null) : base(message, inner) => Error = error;

    public JobStoreError Error { get; }

    /// <summary>For <see cref="JobStoreError.ResourceExhausted"/>: true when the limit frees by itself (the shared queue drains), so a client may retry after a while; false when only the caller can free it (its own jobs).</summary>
    public bool WorthRetrying { get; init; }
}
