namespace InterpMesh.Jobs.Tests;

/// <summary>How a host opens the store its configuration names, and what it says when it cannot.</summary>
public sealed class JobStoresTests
{
    [Fact]
    public async Task A_store_that_cannot_be_opened_names_the_setting_to_check()
    {
        // Nothing listens on port 1: the PostgreSQL store's setting is named, not the embedded one's.
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() =>
            JobStores.OpenConfiguredAsync("Worker", "Host=127.0.0.1;Port=1;Timeout=2", "/nonexistent", new JobStoreOptions()));
        Assert.StartsWith("cannot open the PostgreSQL job store of Worker:Jobs:ConnectionString (or INTERPMESH_JOBS_CONNECTION_STRING): ", e.Message, StringComparison.Ordinal);

        // The embedded store's folder is a file: its setting is named.
        string folder = TempFolders.Create("interpmesh-jobstores-");
        try
        {
            string file = Path.Combine(folder, "not-a-folder");
            await File.WriteAllTextAsync(file, "x");
            e = await Assert.ThrowsAsync<InvalidOperationException>(() => JobStores.OpenConfiguredAsync("Gateway", null, file, new JobStoreOptions()));
            Assert.StartsWith($"cannot open the embedded job store {Path.Combine(file, JobStores.EmbeddedFileName)} (Gateway:JobsPath): ", e.Message, StringComparison.Ordinal);

            // An openable folder gives the embedded store, described by its file.
            var (store, description) = await JobStores.OpenConfiguredAsync("Gateway", "", folder, new JobStoreOptions());
            await using (store)
                Assert.Equal(Path.Combine(folder, JobStores.EmbeddedFileName), description);
        }
        finally
        {
            TempFolders.Delete(folder);
        }
    }
}
