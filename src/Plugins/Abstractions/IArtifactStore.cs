using System.Text.Json.Nodes;
using TorchSharp;

namespace InterpMesh.Plugins;

/// <summary>
/// Named artifacts: a set of files plus JSON metadata, written atomically, each file with a SHA-256
/// checksum verified on read. Names are paths of lower-case segments (letters, digits, <c>-_.</c>)
/// separated by <c>/</c>, e.g. <c>probes/sentiment-l3</c>.
/// </summary>
public interface IArtifactStore
{
    /// <summary>Saves tensors as <c>tensors.safetensors</c> (the metadata is also written into its header).</summary>
    Task<StoredArtifact> SaveTensorsAsync(string name, IReadOnlyDictionary<string, torch.Tensor> tensors, JsonObject? metadata = null, CancellationToken cancellationToken = default);

    /// <summary>Saves arbitrary files (e.g. an SAELens folder: <c>cfg.json</c> + <c>sae_weights.safetensors</c>).</summary>
    Task<StoredArtifact> SaveFilesAsync(string name, IReadOnlyDictionary<string, byte[]> files, JsonObject? metadata = null, CancellationToken cancellationToken = default);

    /// <summary>Loads the tensors saved by <see cref="SaveTensorsAsync"/> (CPU tensors the caller disposes).</summary>
    Task<Dictionary<string, torch.Tensor>> LoadTensorsAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>Loads every file of an artifact, checksums verified.</summary>
    Task<IReadOnlyDictionary<string, byte[]>> LoadFilesAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>The artifact's description, or null when there is none of that name.</summary>
    Task<StoredArtifact?> FindAsync(string name, CancellationToken cancellationToken = default);
}

/// <summary>A stored artifact.</summary>
public sealed class StoredArtifact
{
    /// <summary>Its name.</summary>
    public required string Name { get; init; }

    /// <summary>Its files.</summary>
    public required IReadOnlyList<StoredFile> Files { get; init; }

    /// <summary>The metadata it was saved with.</summary>
    public required JsonObject Metadata { get; init; }

    /// <summary>When it was written.</summary>
    public required DateTimeOffset Created { get; init; }
}

/// <summary>One file of an artifact.</summary>
public sealed class StoredFile
{
    /// <summary>File name within the artifact.</summary>
    public required string Name { get; init; }

    /// <summary>Size in bytes.</summary>
    public required long Bytes { get; init; }

    /// <summary>Lower-case hex SHA-256 of the content.</summary>
    public required string Sha256 { get; init; }
}
