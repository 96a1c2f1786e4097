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
/// <param name="Name">Its name.</param>
/// <param name="Files">Its files.</param>
/// <param name="Metadata">The metadata it was saved with.</param>
/// <param name="Created">When it was written.</param>
public sealed record StoredArtifact(string Name, IReadOnlyList<StoredFile> Files, JsonObject Metadata, DateTimeOffset Created);

/// <summary>One file of an artifact.</summary>
/// <param name="Name">File name within the artifact.</param>
/// <param name="Bytes">Size.</param>
/// <param name="Sha256">Lower-case hex SHA-256 of the content.</param>
public sealed record StoredFile(string Name, long Bytes, string Sha256);
