using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using InterpMesh.Contracts.Artifacts;

namespace InterpMesh.Artifacts;

/// <summary>
/// Artifacts in a directory that several gateway and worker processes, on one machine or many
/// (a shared volume), may write at once. <c>&lt;root&gt;/&lt;name&gt;.artifact</c> is a symbolic
/// link to one immutable version folder, <c>&lt;root&gt;/.versions/&lt;id&gt;/</c>, holding the
/// files and a <c>.artifact.json</c> manifest (files with SHA-256, metadata, creation time).
/// <list type="bullet">
/// <item>A write goes to the writer's own staging folder (<c>.staging/&lt;host&gt;-&lt;pid&gt;/</c>),
/// becomes a version folder, and is published by one <c>rename(2)</c> of a new link over the old
/// one: readers see the old artifact or the new one, never half of one, and two processes
/// replacing one name at once both succeed (the later rename wins) without any lock.</item>
/// <item>Readers resolve the link once and read that version; a version that was replaced or deleted
/// stays on disk for <see cref="Grace"/>, so a read in progress is not cut off, then a sweep removes
/// it.</item>
/// <item>At start a process removes only staging folders of its own host's processes that have exited,
/// and other hosts' staging folders idle for <see cref="StaleStaging"/>; it never clears a shared folder.</item>
/// <item>An artifact is at most <see cref="MaxArtifactBytes"/>, counted while it is written.</item>
/// </list>
/// Artifacts written by earlier versions (a real <c>&lt;name&gt;.artifact/</c> folder) are read as they
/// are and become links when replaced. Checksums are verified on every read.
/// </summary>
public sealed partial class ArtifactStore
{
    /// <summary>The file tensors are saved in (the SDK's <c>SafeTensors.ArtifactFile</c>; this library carries no torch code).</summary>
    public const string TensorsFile = "tensors.safetensors";
    private const string ManifestFile = ".artifact.json";
    private const string Suffix = ".artifact";
    /// <summary>How long a replaced or deleted version stays readable.</summary>
    public static readonly TimeSpan Grace = TimeSpan.FromMinutes(10);
    /// <summary>How long another host's idle staging folder is kept (an upload that slow has failed).</summary>
    public static readonly TimeSpan StaleStaging = TimeSpan.FromHours(24);
    private static readonly TimeSpan SweepEvery = TimeSpan.FromMinutes(1);
    private readonly string root;
    private readonly string staging;
    private readonly string versions;
    private readonly string writer;
    private readonly int maxMetadataBytes;
    private long lastSweep;

    /// <param name="root">The store's folder (shared between processes where they share artifacts).</param>
    /// <param name="maxArtifactBytes">The largest artifact, all files together (Gateway:Limits:MaxArtifactBytes).</param>
    /// <param name="maxMetadataBytes">
    /// Largest metadata (as JSON) an artifact may carry, for what plugins save: uploads are checked
    /// before this, at the API edge (<c>RecordLimits</c>); a manifest over it could not be listed.
    /// </param>
    /// <param name="limitSetting">The setting that sets <paramref name="maxArtifactBytes"/>, named when an artifact exceeds it.</param>
    public ArtifactStore(string root, long maxArtifactBytes = long.MaxValue, int maxMetadataBytes = int.MaxValue, string limitSetting = "Gateway:Limits:MaxArtifactBytes")
    {
        LimitSetting = limitSetting;
        this.maxMetadataBytes = maxMetadataBytes;
        this.root = Path.GetFullPath(root);
        MaxArtifactBytes = maxArtifactBytes;
        staging = Path.Combine(this.root, ".staging");
        versions = Path.Combine(this.root, ".versions");
        string host = Regex.Replace(Environment.MachineName, "[^A-Za-z0-9._-]", "_");
        writer = Path.Combine(staging, $"{host}-{Environment.ProcessId}");
        Directory.CreateDirectory(versions);
        Directory.CreateDirectory(writer);
        CleanStaleStaging(host);
        Sweep(force: true);
    }

    public string Root => root;

    /// <summary>The setting named when an artifact exceeds <see cref="MaxArtifactBytes"/>.</summary>
    public string LimitSetting { get; }

    /// <summary>A size as people read it: bytes, KiB or MiB.</summary>
    public static string DescribeBytes(long n) => n switch
    {
        < 1 << 20 when n % 1024 != 0 || n == 0 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{n} bytes"),
        < 1 << 20 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{n / 1024} KiB"),
        _ when n % (1 << 20) == 0 => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{n >> 20} MiB"),
        _ => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{n / (double)(1 << 20):0.0} MiB"),
    };

    /// <summary>The largest artifact this store accepts, in bytes (all its files together).</summary>
    public long MaxArtifactBytes { get; }

    private string LinkOf(string name)
    {
        ArtifactNames.Check(name);
        var link = Path.GetFullPath(Path.Combine(root, name + Suffix));
        if (!link.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"artifact name '{name}' points outside the store");
        return link;
    }

    /// <summary>
    /// The folder holding the current version of <paramref name="name"/> (its link resolved once), or
    /// null when there is no such artifact.
    /// </summary>
    private string? VersionOf(string name)
    {
        var link = LinkOf(name);
        var info = new DirectoryInfo(link);
        if (info.LinkTarget is { } target)
            return Path.GetFullPath(Path.Combine(Path.GetDirectoryName(link)!, target));
        // An artifact written before versions existed: a real folder.
        return info.Exists ? link : null;
    }

    /// <summary>Starts writing an artifact; nothing is visible until <see cref="ArtifactWrite.CommitAsync"/>.</summary>
    public ArtifactWrite Begin(string name, JsonObject? metadata)
    {
        var link = LinkOf(name);
        if (metadata is not null && maxMetadataBytes < int.MaxValue)
        {
            int bytes = System.Text.Encoding.UTF8.GetByteCount(metadata.ToJsonString());
            if (bytes > maxMetadataBytes)
                throw new ArgumentException($"artifact '{name}' has {bytes} bytes of metadata; the limit is {maxMetadataBytes} (Gateway:Limits:MaxMetadataBytes)");
        }
        Directory.CreateDirectory(writer);
        var dir = Path.Combine(writer, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return new ArtifactWrite(this, name, link, dir, metadata ?? []);
    }

    internal SavedArtifact Commit(ArtifactWrite write, List<SavedFile> files)
    {
        var info = new SavedArtifact { Name = write.Name, Files = files, Metadata = write.Metadata, Created = DateTimeOffset.UtcNow };
        File.WriteAllText(Path.Combine(write.StagingDirectory, ManifestFile), Serialize(info));
        // Touched first: a sweep elsewhere removes unlinked versions only once they are older than Grace.
        Directory.SetLastWriteTimeUtc(write.StagingDirectory, DateTime.UtcNow);
        var version = Path.Combine(versions, Guid.NewGuid().ToString("N"));
        Directory.Move(write.StagingDirectory, version);
        var linkDir = Path.GetDirectoryName(write.Target)!;
        Directory.CreateDirectory(linkDir);
        if (Directory.Exists(write.Target) && new DirectoryInfo(write.Target).LinkTarget is null)
            RetireLegacy(write.Target);
        // Publish: a new link, renamed over the old one in one step.
        var temporary = Path.Combine(writer, "link-" + Guid.NewGuid().ToString("N"));
        File.CreateSymbolicLink(temporary, Path.GetRelativePath(linkDir, version));
        Rename(temporary, write.Target);
        Sweep();
        return info;
    }

    /// <summary>
    /// A folder artifact of an earlier version is moved into the versions (where the sweep removes it
    /// after the grace time), so a link can take its place. If another process moved it first, fine.
    /// </summary>
    private void RetireLegacy(string folder)
    {
        try
        {
            var retired = Path.Combine(versions, Guid.NewGuid().ToString("N"));
            Directory.Move(folder, retired);
            Directory.SetLastWriteTimeUtc(retired, DateTime.UtcNow);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "rename", StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8, SetLastError = true)]
    private static partial int RenameNative(string from, string to);

    /// <summary><c>rename(2)</c>: atomically replaces <paramref name="to"/> (a link) with <paramref name="from"/>.</summary>
    private static void Rename(string from, string to)
    {
        if (RenameNative(from, to) != 0)
        {
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            File.Delete(from);
            throw new IOException($"could not publish the artifact (rename failed with errno {errno})");
        }
    }

    public async Task<SavedArtifact> SaveFilesAsync(string name, IReadOnlyDictionary<string, byte[]> files, JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        using var write = Begin(name, metadata);
        foreach (var (file, bytes) in files)
        {
            await using var stream = write.CreateFile(file);
            await stream.WriteAsync(bytes, cancellationToken);
        }
        return await write.CommitAsync(cancellationToken);
    }

    /// <summary>
    /// Opens <paramref name="file"/> of artifact <paramref name="name"/> for reading after checking its
    /// checksum (what loading tensors reads: the plugin host parses the stream).
    /// </summary>
    public async Task<Stream> OpenVerifiedFileAsync(string name, string file, CancellationToken cancellationToken = default)
    {
        var info = Open(name) ?? throw new FileNotFoundException($"there is no artifact '{name}'");
        if (!info.Files.Any(f => f.Name == file))
            throw new ArgumentException($"artifact '{name}' has no {file}; its files are {string.Join(", ", info.Files.Select(f => f.Name))}");
        var path = Path.Combine(info.Folder, file);
        await Verify(name, path, info.Files.First(f => f.Name == file), cancellationToken);
        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
    }

    public async Task<IReadOnlyDictionary<string, byte[]>> LoadFilesAsync(string name, CancellationToken cancellationToken = default)
    {
        var info = Open(name) ?? throw new FileNotFoundException($"there is no artifact '{name}'");
        var result = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var f in info.Files)
        {
            var bytes = await File.ReadAllBytesAsync(info.PathOf(f.Name), cancellationToken);
            if (Convert.ToHexStringLower(SHA256.HashData(bytes)) != f.Sha256)
                throw Corrupt(name, f.Name);
            result[f.Name] = bytes;
        }
        return result;
    }

    /// <summary>Checks one file's checksum (streaming, for large files).</summary>
    public static async Task Verify(string name, string path, SavedFile file, CancellationToken cancellationToken)
    {
        await using var stream = File.OpenRead(path);
        await Verify(name, stream, file, cancellationToken);
    }

    /// <summary>Checks one open file's checksum from its current position.</summary>
    public static async Task Verify(string name, Stream stream, SavedFile file, CancellationToken cancellationToken)
    {
        var hash = await SHA256.HashDataAsync(stream, cancellationToken);
        if (stream.Length != file.Bytes || Convert.ToHexStringLower(hash) != file.Sha256)
            throw Corrupt(name, file.Name);
    }

    private static InvalidDataException Corrupt(string name, string file) =>
        new($"artifact '{name}' is corrupt: {file} does not match its recorded SHA-256; write it again");

    /// <summary>
    /// The current version of <paramref name="name"/>: its manifest and the folder its files are read
    /// from, resolved once (a later replacement does not change what this snapshot reads); null when
    /// there is no such artifact.
    /// </summary>
    public ArtifactVersion? Open(string name)
    {
        var folder = VersionOf(name);
        if (folder is null)
            return null;
        string json;
        try
        {
            json = File.ReadAllText(Path.Combine(folder, ManifestFile));
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
        var info = Deserialize(name, json);
        return new ArtifactVersion(info, folder);
    }

    public Task<SavedArtifact?> FindAsync(string name, CancellationToken cancellationToken = default) =>
        Task.FromResult(Open(name)?.Info);

    /// <summary>
    /// Artifacts whose name starts with <paramref name="prefix"/> and comes after <paramref name="after"/>
    /// (ordinal), by name. Names are found first; each manifest is read only when the caller takes
    /// that artifact, so a page of a long listing reads only its own manifests.
    /// </summary>
    public IEnumerable<SavedArtifact> List(string prefix = "", string? after = null)
    {
        var names = new List<(string Name, string Manifest)>();
        Walk(root, names, prefix, after);
        names.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return Read(names);
    }

    /// <summary>Finds artifacts (links, or folders of earlier versions) under <paramref name="dir"/>; other folders are name prefixes such as <c>team/</c>.</summary>
    private void Walk(string dir, List<(string Name, string Manifest)> found, string prefix, string? after)
    {
        foreach (var entry in new DirectoryInfo(dir).EnumerateDirectories())
        {
            if (dir == root && (entry.Name == ".staging" || entry.Name == ".versions"))
                continue;
            if (entry.Name.EndsWith(Suffix, StringComparison.Ordinal))
            {
                var name = Path.GetRelativePath(root, entry.FullName)[..^Suffix.Length].Replace(Path.DirectorySeparatorChar, '/');
                if (!name.StartsWith(prefix, StringComparison.Ordinal) || (after is not null && string.CompareOrdinal(name, after) <= 0))
                    continue;
                var folder = entry.LinkTarget is { } target ? Path.GetFullPath(Path.Combine(dir, target)) : entry.FullName;
                found.Add((name, Path.Combine(folder, ManifestFile)));
            }
            else if (entry.LinkTarget is null)
            {
                Walk(entry.FullName, found, prefix, after);
            }
        }
    }

    private static IEnumerable<SavedArtifact> Read(List<(string Name, string Manifest)> names)
    {
        foreach (var (name, manifest) in names)
        {
            SavedArtifact artifact;
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

    /// <summary>Removes the name at once (one unlink); its files stay readable for <see cref="Grace"/> to reads already under way.</summary>
    public bool Delete(string name)
    {
        var link = LinkOf(name);
        var info = new DirectoryInfo(link);
        if (info.LinkTarget is not null)
        {
            try
            {
                File.Delete(link);
            }
            catch (DirectoryNotFoundException)
            {
                return false;
            }
            Sweep();
            return true;
        }
        if (!info.Exists)
            return false;
        RetireLegacy(link);
        Sweep();
        return true;
    }

    /// <summary>
    /// Removes version folders no name links to any more once they are older than <see cref="Grace"/>
    /// (at most once a minute per process, unless <paramref name="force"/>d). Any process may sweep: a
    /// version is linked before it is older than the grace time (its folder is touched just before).
    /// </summary>
    private void Sweep(bool force = false)
    {
        long now = Environment.TickCount64;
        long last = Interlocked.Read(ref lastSweep);
        if (!force && now - last < SweepEvery.TotalMilliseconds)
            return;
        if (Interlocked.CompareExchange(ref lastSweep, now, last) != last && !force)
            return;
        var linked = new HashSet<string>(StringComparer.Ordinal);
        var names = new List<(string Name, string Manifest)>();
        Walk(root, names, "", null);
        foreach (var (_, manifest) in names)
            linked.Add(Path.GetDirectoryName(manifest)!);
        var cutoff = DateTime.UtcNow - Grace;
        foreach (var version in Directory.EnumerateDirectories(versions))
        {
            if (!linked.Contains(version) && Directory.GetLastWriteTimeUtc(version) < cutoff)
                TryDelete(version);
        }
    }

    /// <summary>
    /// Staging folders of this host's processes that have exited (left by a crash), and other hosts'
    /// folders idle for <see cref="StaleStaging"/>. Folders of live writers are never touched.
    /// </summary>
    private void CleanStaleStaging(string host)
    {
        foreach (var dir in Directory.EnumerateDirectories(staging))
        {
            if (dir == writer)
                continue;
            string leaf = Path.GetFileName(dir);
            int dash = leaf.LastIndexOf('-');
            bool sameHost = dash > 0 && leaf[..dash] == host;
            if (sameHost && int.TryParse(leaf[(dash + 1)..], out int pid) ? !Alive(pid) : Idle(dir) > StaleStaging)
                TryDelete(dir);
        }
    }

    private static TimeSpan Idle(string dir)
    {
        var newest = Directory.GetLastWriteTimeUtc(dir);
        foreach (var entry in Directory.EnumerateFileSystemEntries(dir, "*", SearchOption.AllDirectories))
        {
            var t = File.GetLastWriteTimeUtc(entry);
            if (t > newest)
                newest = t;
        }
        return DateTime.UtcNow - newest;
    }

    private static bool Alive(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    private static string Serialize(SavedArtifact info) => new JsonObject
    {
        ["name"] = info.Name,
        ["created"] = info.Created.ToString("O"),
        ["files"] = new JsonArray([.. info.Files.Select(f => (JsonNode)new JsonObject { ["name"] = f.Name, ["bytes"] = f.Bytes, ["sha256"] = f.Sha256 })]),
        ["metadata"] = info.Metadata.DeepClone(),
    }.ToJsonString(new JsonSerializerOptions { WriteIndented = true });

    private static SavedArtifact Deserialize(string name, string json)
    {
        var o = JsonNode.Parse(json)!.AsObject();
        var files = o["files"]!.AsArray().Select(f => new SavedFile { Name = f!["name"]!.GetValue<string>(), Bytes = f["bytes"]!.GetValue<long>(), Sha256 = f["sha256"]!.GetValue<string>() }).ToList();
        return new SavedArtifact { Name = name, Files = files, Metadata = o["metadata"]?.DeepClone().AsObject() ?? [], Created = DateTimeOffset.Parse(o["created"]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture) };
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

    /// <summary>Bytes written so far, all files together.</summary>
    public long Written => Interlocked.Read(ref written);

    private long written;

    /// <summary>
    /// Creates (or appends to) one file of the artifact. Writes past the store's
    /// <see cref="ArtifactStore.MaxArtifactBytes"/> (all files together) throw <see cref="ArtifactTooLargeException"/>.
    /// </summary>
    public Stream CreateFile(string file) =>
        new CountedStream(new FileStream(PathOf(file), FileMode.Append, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true), this);

    private void Count(long bytes)
    {
        if (Interlocked.Add(ref written, bytes) > store.MaxArtifactBytes)
            throw new ArtifactTooLargeException(Name, store.MaxArtifactBytes, store.LimitSetting);
    }

    /// <summary>A file stream that counts what is written against the artifact's limit before writing it.</summary>
    private sealed class CountedStream(FileStream inner, ArtifactWrite owner) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count)
        {
            owner.Count(count);
            inner.Write(buffer, offset, count);
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            owner.Count(buffer.Length);
            inner.Write(buffer);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            owner.Count(count);
            return inner.WriteAsync(buffer, offset, count, cancellationToken);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            owner.Count(buffer.Length);
            return inner.WriteAsync(buffer, cancellationToken);
        }

        public override void WriteByte(byte value)
        {
            owner.Count(1);
            inner.WriteByte(value);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                inner.Dispose();
            base.Dispose(disposing);
        }

        public override async ValueTask DisposeAsync()
        {
            await inner.DisposeAsync();
            await base.DisposeAsync();
        }
    }

    public async Task<SavedArtifact> CommitAsync(CancellationToken cancellationToken = default)
    {
        var files = new List<SavedFile>();
        foreach (var path in Directory.EnumerateFiles(StagingDirectory).Order(StringComparer.Ordinal))
        {
            await using var stream = File.OpenRead(path);
            var hash = await SHA256.HashDataAsync(stream, cancellationToken);
            files.Add(new SavedFile { Name = Path.GetFileName(path), Bytes = stream.Length, Sha256 = Convert.ToHexStringLower(hash) });
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

/// <summary>One version of an artifact: its manifest and the folder its files are read from.</summary>
public sealed record ArtifactVersion(SavedArtifact Info, string Folder)
{
    public IReadOnlyList<SavedFile> Files => Info.Files;

    /// <summary>The path of one of this version's files.</summary>
    public string PathOf(string file)
    {
        ArtifactNames.CheckFile(file);
        return Path.Combine(Folder, file);
    }
}

/// <summary>An artifact grew past the store's size limit while it was written; nothing was stored.</summary>
public sealed class ArtifactTooLargeException(string name, long limit, string setting)
    : Exception($"artifact '{name}' is larger than the limit of {ArtifactStore.DescribeBytes(limit)} ({setting}); nothing was stored")
{
    public long Limit { get; } = limit;
}

/// <summary>A stored artifact: its name, files, metadata and creation time (the plugin SDK's <c>StoredArtifact</c> has the same shape).</summary>
public sealed class SavedArtifact
{
    /// <summary>Its name.</summary>
    public required string Name { get; init; }

    /// <summary>Its files.</summary>
    public required IReadOnlyList<SavedFile> Files { get; init; }

    /// <summary>The metadata it was saved with.</summary>
    public required JsonObject Metadata { get; init; }

    /// <summary>When it was written.</summary>
    public required DateTimeOffset Created { get; init; }
}

/// <summary>One file of an artifact.</summary>
public sealed class SavedFile
{
    /// <summary>File name within the artifact.</summary>
    public required string Name { get; init; }

    /// <summary>Size in bytes.</summary>
    public required long Bytes { get; init; }

    /// <summary>Lower-case hex SHA-256 of the content.</summary>
    public required string Sha256 { get; init; }
}
