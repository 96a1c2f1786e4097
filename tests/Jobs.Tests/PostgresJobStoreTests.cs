using Npgsql;

namespace InterpMesh.Jobs.Tests;

/// <summary>The job-store suite on a real PostgreSQL (a throwaway cluster; one database per test).</summary>
public sealed class PostgresJobStoreTests(PostgresCluster cluster) : JobStoreContract, IClassFixture<PostgresCluster>
{
    protected override Task<string> CreateDatabaseAsync() => cluster.CreateDatabaseAsync();

    protected override async Task<SqlJobStore> OpenAsync(string database, JobStoreOptions options) => await PostgresJobStore.OpenAsync(database, options);

    protected override async Task ExecuteRawAsync(string database, string sql)
    {
        await using var connection = new NpgsqlConnection(database);
        await connection.OpenAsync();
#pragma warning disable CA2100 // The tests' own statements.
        await using var command = new NpgsqlCommand(sql, connection);
#pragma warning restore CA2100
        await command.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task With_a_connection_string_a_host_opens_postgresql_not_the_embedded_file()
    {
        string embedded = Path.Combine(Path.GetTempPath(), $"interpmesh-jobs-unused-p{Environment.ProcessId}-{Guid.NewGuid():N}.db");
        await using var store = await JobStores.OpenAsync(await cluster.CreateDatabaseAsync(), embedded);
        Assert.IsType<PostgresJobStore>(store);
        Assert.False(File.Exists(embedded));
    }

    [Fact]
    public async Task Stores_opening_at_once_apply_the_migrations_once()
    {
        string database = await cluster.CreateDatabaseAsync();
        var stores = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => PostgresJobStore.OpenAsync(database)));
        try
        {
            await using var connection = new NpgsqlConnection(database);
            await connection.OpenAsync();
            await using var command = new NpgsqlCommand("SELECT COUNT(*) FROM interpmesh_schema_version", connection);
            Assert.Equal((long)stores[0].Migrations().Count, await command.ExecuteScalarAsync());
        }
        finally
        {
            foreach (var store in stores)
                await store.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_take_waits_for_a_key_another_transaction_holds_instead_of_reporting_an_empty_queue()
    {
        string database = await cluster.CreateDatabaseAsync();
        await using var store = await PostgresJobStore.OpenAsync(database);
        await store.SubmitAsync(new NewJob("key", "probing", "tiny", "{}"));
        // Another take or a submission of the same key holds the key's row for a moment.
        await using var connection = new NpgsqlConnection(database);
        await connection.OpenAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        await using (var hold = new NpgsqlCommand("SELECT owner FROM job_owners WHERE owner = 'key' FOR UPDATE", connection, transaction))
            await hold.ExecuteScalarAsync();
        var take = store.TakeAsync("w", TimeSpan.FromMinutes(1));
        await Task.Delay(300);
        // Not "nothing queued" (the worker's slot would then sleep a poll interval): it waits for the row.
        Assert.False(take.IsCompleted);
        await transaction.CommitAsync();
        var lease = await take;
        Assert.NotNull(lease);
        Assert.Equal("key", lease.Job.Owner);
    }

    [Fact]
    public async Task Takers_with_separate_connection_pools_skip_locked_rows_and_keep_the_running_limit()
    {
        // Four stores (four connection pools, as four workers would have) racing over one queue.
        string database = await cluster.CreateDatabaseAsync();
        var options = new JobStoreOptions { MaxRunningPerOwner = 3 };
        var stores = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => PostgresJobStore.OpenAsync(database, options)));
        try
        {
            for (int i = 0; i < 40; i++)
                await stores[0].SubmitAsync(new NewJob($"key{i % 5}", "probing", "tiny", "{}"));
            var taken = new System.Collections.Concurrent.ConcurrentBag<JobLease>();
            await Task.WhenAll(stores.Select((store, w) => Task.Run(async () =>
            {
                while (await store.TakeAsync($"w{w}", TimeSpan.FromMinutes(1)) is { } lease)
                    taken.Add(lease);
            })));
            // The running limit (3 per key, 5 keys) holds across the racing takers.
            Assert.Equal(15, taken.Count);
            Assert.Equal(15, taken.Select(l => l.Job.Id).Distinct().Count());
            Assert.All(taken.GroupBy(l => l.Job.Owner), g => Assert.Equal(3, g.Count()));
        }
        finally
        {
            foreach (var store in stores)
                await store.DisposeAsync();
        }
    }

    [Fact]
    public void Without_the_postgresql_server_the_tests_fail_saying_what_to_install()
    {
        var e = Assert.Throws<InvalidOperationException>(() => PostgresCluster.FindBin("/nonexistent/postgresql"));
        Assert.Contains("apt-get install postgresql", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("", "needs a connection string")]
    [InlineData("Host=127.0.0.1;Bogus Key=1", "not valid")]
    [InlineData("Database=jobs", "names no Host")]
    public async Task A_bad_connection_string_is_refused_saying_why(string connectionString, string expected)
    {
        var e = await Assert.ThrowsAsync<JobStoreException>(() => PostgresJobStore.OpenAsync(connectionString));
        Assert.Equal(JobStoreError.InvalidArgument, e.Error);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_unreachable_server_is_unavailable_naming_host_and_port()
    {
        int port = Ports.Free();
        var e = await Assert.ThrowsAsync<JobStoreException>(() => PostgresJobStore.OpenAsync($"Host=127.0.0.1;Port={port};Username=postgres;Database=jobs;Timeout=3"));
        Assert.Equal(JobStoreError.Unavailable, e.Error);
        Assert.Contains($"127.0.0.1:{port}", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Pooled_connections_are_not_reset_unless_the_connection_string_says_so()
    {
        // The store keeps no session state, so it skips DISCARD ALL on a pooled connection's return
        // (half its round trips per job); a connection string may still ask for the reset, in either spelling.
        Assert.False(PostgresJobStore.SaysResetOnClose("Host=db;Database=jobs"));
        Assert.True(PostgresJobStore.SaysResetOnClose("Host=db;No Reset On Close=false"));
        Assert.True(PostgresJobStore.SaysResetOnClose("Host=db;noresetonclose=true"));
        // Either way the store works: a submit, a take and a completion over pooled connections.
        foreach (string extra in new[] { "", ";No Reset On Close=false" })
        {
            await using var store = await PostgresJobStore.OpenAsync(await cluster.CreateDatabaseAsync() + extra);
            for (int i = 0; i < 3; i++)
            {
                var job = await store.SubmitAsync(new NewJob("key", "probing", "tiny", "{}"));
                var lease = await store.TakeAsync("w", TimeSpan.FromMinutes(1));
                Assert.Equal(job.Id, lease!.Job.Id);
                Assert.True(await store.CompleteAsync(lease, JobOutcome.Succeeded("{}")));
            }
        }
    }
}
