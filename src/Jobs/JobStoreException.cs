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
}
