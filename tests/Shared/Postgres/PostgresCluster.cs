namespace InterpMesh.Tests;

/// <summary>
/// A throwaway PostgreSQL cluster for the tests, as an xUnit fixture: <see cref="PostgresServer"/>
/// (initdb into a temporary folder, run as <see cref="ServiceUser"/> when the tests run as root,
/// stopped and removed at the end, orphans of dead processes swept). A missing server or user
/// fails every test that uses the cluster, saying what to install.
/// </summary>
public sealed class PostgresCluster : IAsyncLifetime
{
    public const string ServiceUser = PostgresServer.ServiceUser;

    private readonly PostgresServer server = new("The PostgreSQL job-store tests need");

    public Task InitializeAsync() => server.StartAsync();

    public Task DisposeAsync()
    {
        server.Stop();
        return Task.CompletedTask;
    }

    public string ConnectionString(string database) => server.ConnectionString(database);

    /// <summary>A new empty database in the cluster; returns its connection string.</summary>
    public Task<string> CreateDatabaseAsync() => server.CreateDatabaseAsync();

    /// <summary>The newest installed server's bin folder (<paramref name="root"/>/VERSION/bin).</summary>
    internal static string FindBin(string root = "/usr/lib/postgresql") => PostgresServer.FindBin(root);
}
