using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.Artifacts;
using TorchSharp;

namespace InterpMesh.Plugins.Testing;

/// <summary>
/// An <see cref="IArtifactStore"/> in memory with the gateway store's rules: the same name checks,
/// tensors written as <c>tensors.safetensors</c> (metadata in its header), SHA-256 per file, an
/// artifact replaced whole on a second save. Loaded tensors are new CPU tensors the caller disposes.
/// </summary>
public sealed class InMemoryArtifactStore : IArtifactStore
{
    /// <summary>The file <see cref="SaveTensorsAsync"/> writes.</summary>
    public const string TensorsFile = SafeTensors.ArtifactFile;

    private readonly ConcurrentDictionary<string, (StoredArtifact Info, IReadOnlyDictionary<string, byte[]> Files)> artifacts = new(StringComparer.Ordinal);

    /// <summary>The names of every stored artifact, sorted.</summary>
    public IReadOnlyList<string> Names => [.. artifacts.Keys.Order(StringComparer.Ordinal)];

    /// <inheritdoc/>
    public Task<StoredArtifact> SaveTensorsAsync(string name, IReadOnlyDictionary<string, torch.Tensor> tensors, JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        ArtifactNames.Check(name);
        return Task.FromResult(Store(name, new Dictionary<string, byte[]> { [TensorsFile] = SafeTensors.ToBytes(tensors, metadata) }, metadata));
    }

    /// <inheritdoc/>
    public Task<StoredArtifact> SaveFilesAsync(string name, IReadOnlyDictionary<string, byte[]> files, JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        ArtifactNames.Check(name);
        foreach (var file in files.Keys)
            ArtifactNames.CheckFile(file);
        if (files.Count == 0)
            throw new ArgumentException($"artifact '{name}' has no files; give at least one");
        return Task.FromResult(Store(name, files.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray(), StringComparer.Ordinal), metadata));
    }

    /// <inheritdoc/>
    public Task<Dictionary<string, torch.Tensor>> LoadTensorsAsync(string name, CancellationToken cancellationToken = default)
    {
        var files = Files(name);
        if (!files.TryGetValue(TensorsFile, out var bytes))
            throw new ArgumentException($"artifact '{name}' has no {TensorsFile}; its files are {string.Join(", ", files.Keys)}");
        return Task.FromResult(SafeTensors.Read(bytes, $"artifact '{name}'/{TensorsFile}"));
    }

    /// <inheritdoc/>
    public Task<IReadOnlyDictionary<string, byte[]>> LoadFilesAsync(string name, CancellationToken cancellationToken = default) =>
        Task.FromResult<IReadOnlyDictionary<string, byte[]>>(Files(name).ToDictionary(kv => kv.Key, kv => kv.Value.ToArray(), StringComparer.Ordinal));

    /// <inheritdoc/>
    public Task<StoredArtifact?> FindAsync(string name, CancellationToken cancellationToken = default)
    {
        ArtifactNames.Check(name);
        return Task.FromResult(artifacts.TryGetValue(name, out var stored) ? stored.Info : null);
    }

    private IReadOnlyDictionary<string, byte[]> Files(string name)
    {
        ArtifactNames.Check(name);
        return artifacts.TryGetValue(name, out var stored) ? stored.Files : throw new FileNotFoundException($"there is no artifact '{name}'");
    }

    private StoredArtifact Store(string name, IReadOnlyDictionary<string, byte[]> files, JsonObject? metadata)
    {
        var info = new StoredArtifact
        {
            Name = name,
            Files = [.. files.OrderBy(f => f.Key, StringComparer.Ordinal).Select(f => new StoredFile { Name = f.Key, Bytes = f.Value.Length, Sha256 = Convert.ToHexStringLower(SHA256.HashData(f.Value)) })],
            Metadata = (JsonObject?)metadata?.DeepClone() ?? [],
            Created = DateTimeOffset.UtcNow,
        };
        artifacts[name] = (info, files);
        return info;
    }
}
