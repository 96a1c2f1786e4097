using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.Artifacts;
using InterpMesh.Plugins;
using InterpMesh.Runtime.Loading;
using TorchSharp;

namespace InterpMesh.Gateway.Artifacts;

/// <summary>
/// Artifacts in a directory: <c>&lt;root&gt;/&lt;name&gt;.artifact/</c> holds the files and a
/// <c>.artifact.json</c> manifest (files with SHA-256, metadata, creation time). Writes go to a
/// staging folder and appear with one rename, so readers never see half an artifact, and a
/// replaced artifact is swapped, not overwritten in place. Checksums are verified on every read.
/// </summary>
public sealed class ArtifactStore : IArtifactStore
{
    public const string TensorsFile = "tensors.safetensors";
    private const string ManifestFile = ".artifact.json";
    private const string Suffix = ".artifact";
    private readonly string root;
    private readonly string staging;
    private readonly Lock swap = new();
    private readonly int maxMetadataBytes;

    /// <param name="maxMetadataBytes">
    /// Largest metadata (as JSON) an artifact may carry, for what plugins save: uploads are checked
    /// before this, at the API edge (<c>RecordLimits</c>); a manifest over it could not be listed.
    /// </param>
    public ArtifactStore(string root, int maxMetadataBytes = int.MaxValue)
    {
        this.maxMetadataBytes = maxMetadataBytes;
        this.root = Path.GetFullPath(root);
        staging = Path.Combine(this.root, ".staging");
        Directory.CreateDirectory(staging);
        // Leftovers of writes interrupted by a crash are never visible; clear them.
        foreach (var dir in Directory.EnumerateDirectories(staging))
            TryDelete(dir);
    }

    public string Root => root;

    private string DirectoryOf(string name)
    {
        ArtifactNames.Check(name);
        var dir = Path.GetFullPath(Path.Combine(root, name + Suffix));
        if (!dir.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"artifact name '{name}' points outside the store");
        return dir;
    }

    /// <summary>Starts writing an artifact; nothing is visible until <see cref="ArtifactWrite.CommitAsync"/>.</summary>
    public ArtifactWrite Begin(string name, JsonObject? metadata)
    {
        var target = DirectoryOf(name);
        if (metadata is not null && maxMetadataBytes < int.MaxValue)
        {
            int bytes = System.Text.Encoding.UTF8.GetByteCount(metadata.ToJsonString());
            if (bytes > maxMetadataBytes)
                throw new ArgumentException($"artifact '{name}' has {bytes} bytes of metadata; the limit is {maxMetadataBytes} (Gateway:Limits:MaxMetadataBytes)");
        }
        var dir = Path.Combine(staging, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return new ArtifactWrite(this, name, target, dir, metadata ?? []);
    }

    internal StoredArtifact Commit(ArtifactWrite write, List<StoredFile> files)
    {
        var info = new StoredArtifact(write.Name, files, write.Metadata, DateTimeOffset.UtcNow);
        File.WriteAllText(Path.Combine(write.StagingDirectory, ManifestFile), Serialize(info));
        Directory.CreateDirectory(Path.GetDirectoryName(write.Target)!);
        lock (swap)
        {
            string? old = null;
            if (Directory.Exists(write.Target))
            {
                old = Path.Combine(staging, "old-" + Guid.NewGuid().ToString("N"));
                Directory.Move(write.Target, old);
            }
            Directory.Move(write.StagingDirectory, write.Target);
            if (old is not null)
                TryDelete(old);
        }
        return info;
    }

    public async Task<StoredArtifact> SaveFilesAsync(string name, IReadOnlyDictionary<string, byte[]> files, JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        using var write = Begin(name, metadata);
        foreach (var (file, bytes) in files)
        {
            await using var stream = write.CreateFile(file);
            await stream.WriteAsync(bytes, cancellationToken);
        }
        return await write.CommitAsync(cancellationToken);
    }

    public async Task<StoredArtifact> SaveTensorsAsync(string name, IReadOnlyDictionary<string, torch.Tensor> tensors, JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        using var write = Begin(name, metadata);
        var header = (metadata ?? []).ToDictionary(kv => kv.Key, kv => kv.Value is JsonValue v && v.TryGetValue<string>(out var s) ? s : kv.Value?.ToJsonString() ?? "null");
        SafeTensorsFile.Write(write.PathOf(TensorsFile), tensors, header);
        return await write.CommitAsync(cancellationToken);
    }

    public async Task<Dictionary<string, torch.Tensor>> LoadTensorsAsync(string name, CancellationToken cancellationToken = default)
    {
        var info = await FindAsync(name, cancellationToken) ?? throw new FileNotFoundException($"there is no artifact '{name}'");
        if (!info.Files.Any(f => f.Name == TensorsFile))
            throw new ArgumentException($"artifact '{name}' has no {TensorsFile}; its files are {string.Join(", ", info.Files.Select(f => f.Name))}");
        var path = Path.Combine(DirectoryOf(name), TensorsFile);
        await Verify(name, path, info.Files.First(f => f.Name == TensorsFile), cancellationToken);
        using var file = SafeTensorsFile.Open(path);
        return file.Entries.Keys.ToDictionary(k => k, k => file.Read(k));
    }

    public async Task<IReadOnlyDictionary<string, byte[]>> LoadFilesAsync(string name, CancellationToken cancellationToken = default)
    {
        var info = await FindAsync(name, cancellationToken) ?? throw new FileNotFoundException($"there is no artifact '{name}'");
        var result = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var f in info.Files)
        {
            var bytes = await File.ReadAllBytesAsync(Path.Combine(DirectoryOf(name), f.Name), cancellationToken);
            if (Convert.ToHexStringLower(SHA256.HashData(bytes)) != f.Sha256)
                throw Corrupt(name, f.Name);
            result[f.Name] = bytes;
        }
        return result;
    }

    /// <summary>Checks one file's checksum (streaming, for large files).</summary>
    public async Task Verify(string name, string path, StoredFile file, CancellationToken cancellationToken)
    {
        await using var stream = File.OpenRead(path);
        var hash = await SHA256.HashDataAsync(stream, cancellationToken);
        if (stream.Length != file.Bytes || Convert.ToHexStringLower(hash) != file.Sha256)
            throw Corrupt(name, file.Name);
    }

    private static InvalidDataException Corrupt(string name, string file) =>
        new($"artifact '{name}' is corrupt: {file} does not match its recorded SHA-256; write it again");

    /// <summary>Opens one file of an artifact for reading (after <see cref="Verify"/>).</summary>
    public string PathOf(string name, string file)
    {
        ArtifactNames.CheckFile(file);
        return Path.Combine(DirectoryOf(name), file);
    }

    public Task<StoredArtifact?> FindAsync(string name, CancellationToken cancellationToken = default)
    {
        var manifest = Path.Combine(DirectoryOf(name), ManifestFile);
        return Task.FromResult(File.Exists(manifest) ? Deserialize(name, File.ReadAllText(manifest)) : null);
    }

    /// <summary>
    /// Artifacts whose name starts with <paramref name="prefix"/> and comes after <paramref name="after"/>
    /// (ordinal), by name. Names are found first; each manifest is read only when the caller takes
    /// that artifact, so a page of a long listing reads only its own manifests.
    /// </summary>
    public IEnumerable<StoredArtifact> List(string prefix = "", string? after = null)
    {
        var names = new List<(string Name, string Manifest)>();
        foreach (var manifest in Directory.EnumerateFiles(root, ManifestFile, SearchOption.AllDirectories))
        {
            var dir = Path.GetDirectoryName(manifest)!;
            if (dir.StartsWith(staging, StringComparison.Ordinal) || !dir.EndsWith(Suffix, StringComparison.Ordinal))
                continue;
            var name = Path.GetRelativePath(root, dir)[..^Suffix.Length].Replace(Path.DirectorySeparatorChar, '/');
            if (name.StartsWith(prefix, StringComparison.Ordinal) && (after is null || string.CompareOrdinal(name, after) > 0))
                names.Add((name, manifest));
        }
        names.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return Read(names);
    }

    private static IEnumerable<StoredArtifact> Read(List<(string Name, string Manifest)> names)
    {
        foreach (var (name, manifest) in names)
        {
            StoredArtifact artifact;
            try
            {
                artifact = Deserialize(name, File.ReadAllText(manifest));
            }
            catch (Exception e) when (e is JsonException or IOException)
            {
                // A damaged manifest, or an artifact deleted since the names were read, is not listed; reading it reports the damage.
                continue;
            }
            yield return artifact;
        }
    }

    public bool Delete(string name)
    {
        var dir = DirectoryOf(name);
        lock (swap)
        {
            if (!Directory.Exists(dir))
                return false;
            var old = Path.Combine(staging, "deleted-" + Guid.NewGuid().ToString("N"));
            Directory.Move(dir, old);
            TryDelete(old);
            return true;
        }
    }

    private static string Serialize(StoredArtifact info) => new JsonObject
    {
        ["name"] = info.Name,
        ["created"] = info.Created.ToString("O"),
        ["files"] = new JsonArray([.. info.Files.Select(f => (JsonNode)new JsonObject { ["name"] = f.Name, ["bytes"] = f.Bytes, ["sha256"] = f.Sha256 })]),
        ["metadata"] = info.Metadata.DeepClone(),
    }.ToJsonString(new JsonSerializerOptions { WriteIndented = true });

    private static StoredArtifact Deserialize(string name, string json)
    {
        var o = JsonNode.Parse(json)!.AsObject();
        var files = o["files"]!.AsArray().Select(f => new StoredFile(f!["name"]!.GetValue<string>(), f["bytes"]!.GetValue<long>(), f["sha256"]!.GetValue<string>())).ToList();
        return new StoredArtifact(name, files, o["metadata"]?.DeepClone().AsObject() ?? [], DateTimeOffset.Parse(o["created"]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture));
    }

    private static void TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    internal static void Discard(string dir) => TryDelete(dir);
}

/// <summary>An artifact being written into the staging area.</summary>
public sealed class ArtifactWrite : IDisposable
{
    private readonly ArtifactStore store;
    private bool committed;

    internal ArtifactWrite(ArtifactStore store, string name, string target, string stagingDirectory, JsonObject metadata)
    {
        this.store = store;
        Name = name;
        Target = target;
        StagingDirectory = stagingDirectory;
        Metadata = metadata;
    }

    public string Name { get; }
    internal string Target { get; }
    internal string StagingDirectory { get; }
    public JsonObject Metadata { get; }

    internal string PathOf(string file)
    {
        ArtifactNames.CheckFile(file);
        return Path.Combine(StagingDirectory, file);
    }

    /// <summary>Creates (or appends to) one file of the artifact.</summary>
    public FileStream CreateFile(string file) => new(PathOf(file), FileMode.Append, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);

    public async Task<StoredArtifact> CommitAsync(CancellationToken cancellationToken = default)
    {
        var files = new List<StoredFile>();
        foreach (var path in Directory.EnumerateFiles(StagingDirectory).Order(StringComparer.Ordinal))
        {
            await using var stream = File.OpenRead(path);
            var hash = await SHA256.HashDataAsync(stream, cancellationToken);
            files.Add(new StoredFile(Path.GetFileName(path), stream.Length, Convert.ToHexStringLower(hash)));
        }
        var info = store.Commit(this, files);
        committed = true;
        return info;
    }

    public void Dispose()
    {
        if (!committed)
            ArtifactStore.Discard(StagingDirectory);
    }
}
