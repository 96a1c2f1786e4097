using Microsoft.Data.Sqlite;

namespace InterpMesh.Jobs.Tests;

/// <summary>The folder of the SQLite tests' database files, removed when they end.</summary>
public sealed class SqliteFolder : IDisposable
{
    public string Path { get; } = TempFolders.Create("interpmesh-jobs-sqlite-");

    public void Dispose()
    {
        // Pooled connections keep files open; release them all before the folder goes.
        SqliteConnection.ClearAllPools();
        TempFolders.Delete(Path);
    }
}

/// <summary>The job-store suite on the embedded SQLite store, plus what only a file-backed store has.</summary>
public sealed class SqliteJobStoreTests(SqliteFolder folder) : JobStoreContract, IClassFixture<SqliteFolder>
{
    private string Folder => folder.Path;

    protected override Task<string> CreateDatabaseAsync() => Task.FromResult(System.IO.Path.Combine(Folder, $"{Guid.NewGuid():N}.db"));

    protected override async Task<SqlJobStore> OpenAsync(string database, JobStoreOptions options) => await SqliteJobStore.OpenAsync(database, options);

    protected override async Task ExecuteRawAsync(string database, string sql)
    {
        await using var connection = new SqliteConnection($"Data Source={database}");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
#pragma warning disable CA2100 // The tests' own statements.
        command.CommandText = sql;
#pragma warning restore CA2100
        await command.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task The_native_sqlite_library_loads_and_the_file_is_in_wal_mode()
    {
        string path = await CreateDatabaseAsync();
        await using var store = await SqliteJobStore.OpenAsync(path);
        Assert.Equal(path, store.Path);
        await using var connection = new SqliteConnection($"Data Source={path}");
        await connection.OpenAsync();
        Assert.Matches(@"^3\.\d+", connection.ServerVersion);
        await using var command = connection.CreateCommand();
        command.CommandText = "PRAGMA journal_mode";
        Assert.Equal("wal", await command.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Two_stores_on_one_file_never_hand_out_the_same_job()
    {
        // Two instances stand for two processes on one machine: their writers meet only in SQLite's lock.
        string path = await CreateDatabaseAsync();
        var options = new JobStoreOptions { MaxRunningPerOwner = 100 };
        await using var a = await SqliteJobStore.OpenAsync(path, options);
        await using var b = await SqliteJobStore.OpenAsync(path, options);
        for (int i = 0; i < 30; i++)
            await a.SubmitAsync(new NewJob($"key{i % 3}", "probing", "tiny", "{}"));
        var taken = new System.Collections.Concurrent.ConcurrentBag<string>();
        await Task.WhenAll(new[] { a, b, a, b }.Select((store, w) => Task.Run(async () =>
        {
            while (await store.TakeAsync($"w{w}", TimeSpan.FromMinutes(1)) is { } lease)
                taken.Add(lease.Job.Id);
        })));
        Assert.Equal(30, taken.Count);
        Assert.Equal(30, taken.Distinct().Count());
    }

    [Fact]
    public async Task Without_a_connection_string_a_host_opens_the_embedded_store()
    {
        string path = await CreateDatabaseAsync();
        await using var store = await JobStores.OpenAsync("", path);
        Assert.Equal(path, Assert.IsType<SqliteJobStore>(store).Path);
        var e = await Assert.ThrowsAsync<JobStoreException>(() => JobStores.OpenAsync(null, " "));
        Assert.Equal(JobStoreError.InvalidArgument, e.Error);
        Assert.Contains("configure the job store", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    public async Task Opening_without_a_path_is_refused(string path)
    {
        var e = await Assert.ThrowsAsync<JobStoreException>(() => SqliteJobStore.OpenAsync(path));
        Assert.Equal(JobStoreError.InvalidArgument, e.Error);
        Assert.Contains("needs a database file path", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Opening_a_folder_is_refused_naming_it()
    {
        var e = await Assert.ThrowsAsync<JobStoreException>(() => SqliteJobStore.OpenAsync(Folder));
        Assert.Equal(JobStoreError.InvalidArgument, e.Error);
        Assert.Contains("is a folder", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_file_that_is_not_a_database_is_refused_naming_it()
    {
        string path = System.IO.Path.Combine(Folder, "not-a-database.db");
        await File.WriteAllTextAsync(path, new string('x', 4096));
        var e = await Assert.ThrowsAsync<JobStoreException>(() => SqliteJobStore.OpenAsync(path));
        Assert.Equal(JobStoreError.Unavailable, e.Error);
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
    }
}
