namespace InterpMesh.Jobs;

/// <summary>
/// Opens the store a host is configured for, the same way in gateways and workers: PostgreSQL when
/// a connection string is given, else the embedded SQLite file.
/// </summary>
public static class JobStores
{
    /// <summary>The environment variable gateways and workers read the PostgreSQL connection string from when their configuration sets none.</summary>
    public const string ConnectionStringVariable = "INTERPMESH_JOBS_CONNECTION_STRING";

    /// <summary>The embedded store's file in a host's jobs folder: one data folder serves a gateway and a worker.</summary>
    public const string EmbeddedFileName = "jobs.db";

    /// <param name="connectionString">An Npgsql connection string; null or empty for the embedded store.</param>
    /// <param name="embeddedPath">The SQLite file used when there is no connection string.</param>
    public static async Task<SqlJobStore> OpenAsync(string? connectionString, string embeddedPath, JobStoreOptions? options = null, CancellationToken cancellationToken = default)
    {
        if (!string.IsNullOrWhiteSpace(connectionString))
            return await PostgresJobStore.OpenAsync(connectionString, options, cancellationToken);
        if (string.IsNullOrWhiteSpace(embeddedPath))
            throw new JobStoreException(JobStoreError.InvalidArgument, "configure the job store: a PostgreSQL connection string, or a file for the embedded store");
        return await SqliteJobStore.OpenAsync(embeddedPath, options, cancellationToken);
    }
}
