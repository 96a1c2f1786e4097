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

    /// <summary>
    /// The store a host's configuration section names: <c>{section}:Jobs:ConnectionString</c> (or
    /// <see cref="ConnectionStringVariable"/>) for PostgreSQL, else the embedded file in
    /// <paramref name="jobsPath"/> (<c>{section}:JobsPath</c>); migrated to the current schema.
    /// A store that cannot be opened stops the host with the setting to check named.
    /// </summary>
    /// <returns>The store and what it is, for the host's log ("PostgreSQL (…)" or the file).</returns>
    public static async Task<(SqlJobStore Store, string Description)> OpenConfiguredAsync(string section, string? connectionString, string jobsPath, JobStoreOptions options, CancellationToken cancellationToken = default)
    {
        string? connection = !string.IsNullOrWhiteSpace(connectionString) ? connectionString : Environment.GetEnvironmentVariable(ConnectionStringVariable);
        string embedded = Path.Combine(jobsPath, EmbeddedFileName);
        try
        {
            var store = await OpenAsync(connection, embedded, options, cancellationToken);
            return (store, string.IsNullOrWhiteSpace(connection) ? embedded : $"PostgreSQL ({section}:Jobs:ConnectionString)");
        }
        catch (Exception e) when (e is JobStoreException or System.Data.Common.DbException or ArgumentException or IOException or UnauthorizedAccessException or System.Net.Sockets.SocketException or TimeoutException)
        {
            string where = string.IsNullOrWhiteSpace(connection)
                ? $"the embedded job store {embedded} ({section}:JobsPath)"
                : $"the PostgreSQL job store of {section}:Jobs:ConnectionString (or {ConnectionStringVariable})";
            throw new InvalidOperationException($"cannot open {where}: {e.Message}", e);
        }
    }
}
