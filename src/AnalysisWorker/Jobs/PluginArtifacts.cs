using System.Text.Json.Nodes;
using InterpMesh.Artifacts;
using InterpMesh.Plugins;
using TorchSharp;

namespace InterpMesh.AnalysisWorker.Jobs;

/// <summary>
/// The SDK's artifact store for plugins, over the shared <see cref="ArtifactStore"/> folder the
/// gateways serve: plugins write there directly (workers and gateways mount one volume). Tensors
/// are written and read as safetensors here, where TorchSharp is; the store itself is torch-free.
/// </summary>
public sealed class PluginArtifacts(ArtifactStore store) : IArtifactStore
{
    /// <summary>The folder underneath.</summary>
    public ArtifactStore Store => store;

    public async Task<StoredArtifact> SaveTensorsAsync(string name, IReadOnlyDictionary<string, torch.Tensor> tensors, JsonObject? metadata = null, CancellationToken cancellationToken = default)
    {
        using var write = store.Begin(name, metadata);
        await using (var stream = write.CreateFile(SafeTensors.ArtifactFile))
            SafeTensors.Write(stream, tensors, metadata);
        return ToSdk(await write.CommitAsync(cancellationToken));
    }

    public async Task<StoredArtifact> SaveFilesAsync(string name, IReadOnlyDictionary<string, byte[]> files, JsonObject? metadata = null, CancellationToken cancellationToken = default) =>
        ToSdk(await store.SaveFilesAsync(name, files, metadata, cancellationToken));

    public async Task<Dictionary<string, torch.Tensor>> LoadTensorsAsync(string name, CancellationToken cancellationToken = default)
    {
        await using var stream = await store.OpenVerifiedFileAsync(name, SafeTensors.ArtifactFile, cancellationToken);
        return SafeTensors.Read(stream, $"artifact '{name}'/{SafeTensors.ArtifactFile}");
    }

    public Task<IReadOnlyDictionary<string, byte[]>> LoadFilesAsync(string name, CancellationToken cancellationToken = default) =>
        store.LoadFilesAsync(name, cancellationToken);

    public async Task<StoredArtifact?> FindAsync(string name, CancellationToken cancellationToken = default) =>
        await store.FindAsync(name, cancellationToken) is { } found ? ToSdk(found) : null;

    private static StoredArtifact ToSdk(SavedArtifact a) => new()
    {
        Name = a.Name,
        Files = [.. a.Files.Select(f => new StoredFile { Name = f.Name, Bytes = f.Bytes, Sha256 = f.Sha256 })],
        Metadata = a.Metadata,
        Created = a.Created,
    };
}
