using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Client;

public sealed partial class MeshClient
{
    private const int UploadChunkBytes = 1 << 20;

    /// <summary>Every artifact whose name starts with <paramref name="prefix"/>, by name: the gateway's pages, followed to the last.</summary>
    public async Task<ListArtifactsResponse> ListArtifactsAsync(string? prefix = null, CancellationToken cancellationToken = default)
    {
        var all = new ListArtifactsResponse();
        await foreach (var artifact in EnumerateArtifactsAsync(prefix, cancellationToken).ConfigureAwait(false))
            all.Artifacts.Add(artifact);
        return all;
    }

    /// <summary>
    /// Artifacts whose name starts with <paramref name="prefix"/>, by name, fetched a page at a time
    /// (the gateway's default page size) as the caller reads them.
    /// </summary>
    public async IAsyncEnumerable<ArtifactInfo> EnumerateArtifactsAsync(string? prefix = null, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = new ListArtifactsRequest { Prefix = prefix ?? "" };
        do
        {
            var page = await ArtifactService.ListArtifactsAsync(request, cancellationToken: cancellationToken).ConfigureAwait(false);
            foreach (var artifact in page.Artifacts)
                yield return artifact;
            // A token that does not move on would loop forever: a broken server, said plainly.
            if (page.NextPageToken.Length > 0 && (page.NextPageToken == request.PageToken || page.Artifacts.Count == 0))
                throw new InvalidDataException("the gateway returned a next_page_token that does not advance the artifact listing");
            request.PageToken = page.NextPageToken;
        }
        while (request.PageToken.Length > 0);
    }

    /// <summary>
    /// Downloads an artifact's files into <paramref name="directory"/> (created if needed); returns its
    /// description. Each file's bytes are written at the offsets the server sends.
    /// </summary>
    public async Task<ArtifactInfo> DownloadArtifactAsync(string name, string directory, CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(directory);
        using var call = ArtifactService.GetArtifact(new GetArtifactRequest { Name = name }, cancellationToken: cancellationToken);
        ArtifactInfo? info = null;
        var streams = new Dictionary<string, FileStream>(StringComparer.Ordinal);
        try
        {
            await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                if (chunk.Header is { } header)
                {
                    info = header;
                    continue;
                }
                string file = Path.GetFileName(chunk.Data.File);
                if (file.Length == 0 || info is null || !info.Files.Any(f => f.Name == file))
                    throw new InvalidDataException($"the server sent data for '{chunk.Data.File}', which is not a file of artifact '{name}'");
                if (!streams.TryGetValue(file, out var stream))
                    streams[file] = stream = File.Create(Path.Combine(directory, file));
                stream.Position = chunk.Data.Offset;
                chunk.Data.Data.WriteTo(stream);
            }
        }
        finally
        {
            foreach (var stream in streams.Values)
                await stream.DisposeAsync().ConfigureAwait(false);
        }
        return info ?? throw new InvalidDataException($"the server sent no description of artifact '{name}'");
    }

    /// <summary>
    /// Uploads every file directly in <paramref name="directory"/> as artifact <paramref name="name"/>
    /// (replacing one of that name), with <paramref name="metadataJson"/> (a JSON object) as metadata.
    /// </summary>
    public async Task<ArtifactInfo> UploadArtifactAsync(string name, string directory, string? metadataJson = null, CancellationToken cancellationToken = default)
    {
        var files = Directory.GetFiles(directory).Order(StringComparer.Ordinal).ToList();
        using var call = ArtifactService.PutArtifact(cancellationToken: cancellationToken);
        var header = new ArtifactInfo { Name = name, MetadataJson = metadataJson ?? "{}" };
        header.Files.AddRange(files.Select(f => new ArtifactFileInfo { Name = Path.GetFileName(f), Bytes = new FileInfo(f).Length }));
        // The gateway may answer (refuse) before the upload is all sent. Writing then can wait on HTTP/2
        // flow control that never opens again, so the writes stop as soon as the answer is in.
        using var answered = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var response = call.ResponseAsync;
        using var watch = response.ContinueWith(_ => answered.Cancel(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            await call.RequestStream.WriteAsync(new ArtifactChunk { Header = header }, answered.Token).ConfigureAwait(false);
            var buffer = new byte[UploadChunkBytes];
            foreach (var file in files)
            {
                await using var stream = File.OpenRead(file);
                long offset = 0;
                int n;
                while ((n = await stream.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                {
                    var data = new FileData { File = Path.GetFileName(file), Offset = offset, Data = ByteString.CopyFrom(buffer, 0, n) };
                    await call.RequestStream.WriteAsync(new ArtifactChunk { Data = data }, answered.Token).ConfigureAwait(false);
                    offset += n;
                }
            }
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException || e is OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            // The gateway refused the upload before it was all sent: its answer (what to fix) is the call's status.
        }
        return await response.ConfigureAwait(false);
    }

    /// <summary>Deletes an artifact; false when there was none of that name.</summary>
    public async Task<bool> DeleteArtifactAsync(string name, CancellationToken cancellationToken = default) =>
        (await ArtifactService.DeleteArtifactAsync(new DeleteArtifactRequest { Name = name }, cancellationToken: cancellationToken).ConfigureAwait(false)).Deleted;
}
