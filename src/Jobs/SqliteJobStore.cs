using System.Data.Common;
using Microsoft.Data.Sqlite;

namespace InterpMesh.Jobs;

/// <summary>
/// The embedded job store: one SQLite file (write-ahead log), for <c>interpmesh up</c>, the demo
/// and tests — no server to run. Writers take the database one at a time (<c>BEGIN IMMEDIATE</c>;
/// within a process they queue on a semaphore first), which gives the queue's take the same
/// guarantees as PostgreSQL's row locks. Processes sharing the file must share a machine
/// (SQLite's locks do not work over network file systems).
/// </summary>
public sealed class SqliteJobStore : SqlJobStore
{
    private readonly string connectionString;
    private readonly SemaphoreSlim writer = new(1, 1);

    private SqliteJobStore(string connectionString, JobStoreOptions options) : base(options) => this.connectionString = connectionString;

    public string Path { get; private init; } = "";

    /// <summary>Opens (creating if needed) the database file, applies missing migrations and returns the store.</summary>
    public static async Task<SqliteJobStore> OpenAsync(string path, JobStoreOptions? options = null, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(path))
            throw new JobStoreException(JobStoreError.InvalidArgument, "the embedded job store needs a database file path");
        string full = System.IO.Path.GetFullPath(path);
        if (Directory.Exists(full))
            throw new JobStoreException(JobStoreError.InvalidArgument, $"the embedded job store's path '{full}' is a folder; name a file in it (for example jobs.db)");
        string? folder = System.IO.Path.GetDirectoryName(full);
        if (folder is not null)
            Directory.CreateDirectory(folder);
        var builder = new SqliteConnectionStringBuilder { DataSource = full, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = true, DefaultTimeout = 30 };
        var store = new SqliteJobStore(builder.ToString(), options ?? new JobStoreOptions()) { Path = full };
        try
        {
            await using (var connection = await store.OpenConnectionAsync(cancellationToken))
            await using (var command = Command(connection, null, "PRAGMA journal_mode = WAL"))
                await command.ExecuteNonQueryAsync(cancellationToken);
            await store.MigrateAsync(cancellationToken);
            return store;
        }
        catch (SqliteException e)
        {
            await store.DisposeAsync();
            throw new JobStoreException(JobStoreError.Unavailable, $"cannot open the embedded job database '{full}': {e.Message}", e);
        }
        catch
        {
            await store.DisposeAsync();
            throw;
        }
    }

    protected override string MigrationFolder => "Sqlite";

    protected override string ForUpdate => "";

    protected override string ForUpdateSkipLocked => "";

    protected override async Task<DbConnection> OpenConnectionAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            // Other processes may hold the write lock for a moment: wait for it rather than fail.
            await using var command = Command(connection, null, "PRAGMA busy_timeout = 30000");
            await command.ExecuteNonQueryAsync(cancellationToken);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    protected override async Task<WriteScope> BeginWriteAsync(CancellationToken cancellationToken)
    {
        await writer.WaitAsync(cancellationToken);
        try
        {
            var connection = (SqliteConnection)await OpenConnectionAsync(cancellationToken);
            try
            {
                // deferred: false is BEGIN IMMEDIATE: the write lock is taken now, not at the first write.
                var transaction = connection.BeginTransaction(deferred: false);
                return new WriteScope(connection, transaction, () => writer.Release());
            }
            catch
            {
                await connection.DisposeAsync();
                throw;
            }
        }
        catch
        {
            writer.Release();
            throw;
        }
    }

    protected override Task LockSchemaAsync(WriteScope write, CancellationToken cancellationToken) => Task.CompletedTask;

    public override ValueTask DisposeAsync()
    {
        writer.Dispose();
        // Pooled connections keep the file open; release them so the file can be deleted.
        using (var connection = new SqliteConnection(connectionString))
            SqliteConnection.ClearPool(connection);
        return ValueTask.CompletedTask;
    }
}
