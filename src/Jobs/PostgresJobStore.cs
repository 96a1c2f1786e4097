using System.Data;
using System.Data.Common;
using Npgsql;

namespace InterpMesh.Jobs;

/// <summary>
/// The job store in PostgreSQL, for deployments: any number of gateways and workers share one
/// database. Writes run under READ COMMITTED; the queue's take locks with <c>FOR UPDATE SKIP
/// LOCKED</c>, so concurrent takers never wait on, or get, the same job (one waits on a key's row
/// only when that key, held by another take or a submission, is the only one with work). Migrations run at open
/// under an advisory lock, so replicas starting together apply them once.
/// </summary>
public sealed class PostgresJobStore : SqlJobStore
{
    /// <summary>The advisory lock key migrations hold ("InterpMesh jobs").</summary>
    private const long MigrationLock = 0x496D_4A6F_6273;

    private readonly NpgsqlDataSource source;

    private PostgresJobStore(NpgsqlDataSource source, JobStoreOptions options) : base(options) => this.source = source;

    /// <summary>Connects, applies missing migrations and returns the store; errors name the database and what failed.</summary>
    public static async Task<PostgresJobStore> OpenAsync(string connectionString, JobStoreOptions? options = null, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(connectionString))
            throw new JobStoreException(JobStoreError.InvalidArgument, "the PostgreSQL job store needs a connection string (Host=…;Database=…;Username=…)");
        NpgsqlConnectionStringBuilder builder;
        try
        {
            builder = new NpgsqlConnectionStringBuilder(connectionString);
        }
        catch (ArgumentException e)
        {
            throw new JobStoreException(JobStoreError.InvalidArgument, $"the job store's connection string is not valid: {e.Message}", e);
        }
        if (string.IsNullOrEmpty(builder.Host))
            throw new JobStoreException(JobStoreError.InvalidArgument, "the job store's connection string names no Host");
        // The store keeps no session state (its one lock is transaction-scoped), so a pooled
        // connection needs no DISCARD ALL when it is returned: that reset was about half of the
        // store's round trips per job (docs/benchmarks.md, jobs). A connection string that says
        // otherwise is obeyed.
        if (!SaysResetOnClose(connectionString))
            builder.NoResetOnClose = true;
        var store = new PostgresJobStore(NpgsqlDataSource.Create(builder), options ?? new JobStoreOptions());
        try
        {
            await store.MigrateAsync(cancellationToken);
            return store;
        }
        catch (Exception e) when (e is NpgsqlException or TimeoutException)
        {
            await store.DisposeAsync();
            throw new JobStoreException(JobStoreError.Unavailable,
                $"cannot open the job database {builder.Database ?? builder.Username} at {builder.Host}:{builder.Port}: {e.Message}", e);
        }
        catch
        {
            await store.DisposeAsync();
            throw;
        }
    }

    protected override string MigrationFolder => "Postgres";

    protected override string ForUpdate => " FOR UPDATE";

    protected override string ForUpdateSkipLocked => " FOR UPDATE SKIP LOCKED";

    protected override async Task<DbConnection> OpenConnectionAsync(CancellationToken cancellationToken) =>
        await source.OpenConnectionAsync(cancellationToken);

    protected override async Task<WriteScope> BeginWriteAsync(CancellationToken cancellationToken)
    {
        var connection = await source.OpenConnectionAsync(cancellationToken);
        try
        {
            var transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
            return new WriteScope(connection, transaction);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    protected override async Task LockSchemaAsync(WriteScope write, CancellationToken cancellationToken) =>
        await ExecuteAsync(write, "SELECT pg_advisory_xact_lock(@key)", cancellationToken, ("key", MigrationLock));

    public override ValueTask DisposeAsync() => source.DisposeAsync();

    /// <summary>Whether the connection string sets No Reset On Close itself (either spelling).</summary>
    internal static bool SaysResetOnClose(string connectionString)
    {
        var raw = new System.Data.Common.DbConnectionStringBuilder { ConnectionString = connectionString };
        return raw.ContainsKey("No Reset On Close") || raw.ContainsKey("NoResetOnClose");
    }
}
