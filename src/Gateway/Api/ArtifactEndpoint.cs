using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using InterpMesh.Contracts.Artifacts;
using InterpMesh.Contracts.V1;
using InterpMesh.Artifacts;

namespace InterpMesh.Gateway.Api;

/// <summary><c>interpmesh.v1.ArtifactService</c> over the directory store.</summary>
public sealed class ArtifactEndpoint(ArtifactStore store, RecordLimits limits) : ArtifactService.ArtifactServiceBase
{
    private const int ChunkBytes = 1 << 20;

    private static Contracts.V1.ArtifactInfo ToProto(SavedArtifact a)
    {
        var p = new Contracts.V1.ArtifactInfo { Name = a.Name, MetadataJson = a.Metadata.ToJsonString(), Created = Timestamp.FromDateTimeOffset(a.Created) };
        p.Files.AddRange(a.Files.Select(f => new ArtifactFileInfo { Name = f.Name, Bytes = f.Bytes, Sha256 = f.Sha256 }));
        return p;
    }

    /// <summary>
    /// One page, in name order: at most the page size (<see cref="RecordLimits.PageSize"/>), and
    /// never past <see cref="RecordLimits.PageBudgetBytes"/> (a page always holds at least one
    /// artifact, which the upload limits keep far below it).
    /// </summary>
    public override Task<ListArtifactsResponse> ListArtifacts(ListArtifactsRequest request, ServerCallContext context) => Errors.Guard(() =>
    {
        if (request.Prefix.Length > ArtifactNames.MaxLength)
            throw new ArgumentException($"prefix is {request.Prefix.Length} characters long; no artifact name is longer than {ArtifactNames.MaxLength}");
        int size = limits.PageSize(request.PageSize);
        string? after = PageTokens.Read(request.PageToken, request.Prefix);
        var response = new ListArtifactsResponse();
        long bytes = 0;
        foreach (var artifact in store.List(request.Prefix, after))
        {
            var info = ToProto(artifact);
            // The field's own framing: a tag byte and a length of up to 5 bytes.
            int n = info.CalculateSize() + 6;
            if (response.Artifacts.Count == size || (response.Artifacts.Count > 0 && bytes + n > RecordLimits.PageBudgetBytes))
            {
                response.NextPageToken = PageTokens.Write(request.Prefix, response.Artifacts[^1].Name);
                break;
            }
            response.Artifacts.Add(info);
            bytes += n;
        }
        return Task.FromResult(response);
    });

    public override Task GetArtifact(GetArtifactRequest request, IServerStreamWriter<ArtifactChunk> responseStream, ServerCallContext context) => Errors.GuardAsync(async () =>
    {
        // One version, its files opened before anything is sent: a replacement or a delete while the
        // files stream does not mix versions or cut the stream off.
        var version = store.Open(request.Name)
            ?? throw new RpcException(new Status(StatusCode.NotFound, $"no artifact '{request.Name}' (ListArtifacts shows what there is)"));
        var streams = new List<FileStream>();
        try
        {
            foreach (var f in version.Files)
                streams.Add(new FileStream(version.PathOf(f.Name), FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, useAsync: true));
            for (int i = 0; i < streams.Count; i++)
            {
                await ArtifactStore.Verify(version.Info.Name, streams[i], version.Files[i], context.CancellationToken);
                streams[i].Position = 0;
            }
            await responseStream.WriteAsync(new ArtifactChunk { Header = ToProto(version.Info) }, context.CancellationToken);
            var buffer = new byte[ChunkBytes];
            for (int i = 0; i < streams.Count; i++)
            {
                long offset = 0;
                int n;
                while ((n = await streams[i].ReadAsync(buffer, context.CancellationToken)) > 0)
                {
                    await responseStream.WriteAsync(new ArtifactChunk { Data = new FileData { File = version.Files[i].Name, Offset = offset, Data = ByteString.CopyFrom(buffer, 0, n) } }, context.CancellationToken);
                    offset += n;
                }
            }
        }
        finally
        {
            foreach (var stream in streams)
                await stream.DisposeAsync();
        }
    });

    public override Task<Contracts.V1.ArtifactInfo> PutArtifact(IAsyncStreamReader<ArtifactChunk> requestStream, ServerCallContext context) => Errors.GuardAsync(async () =>
    {
        var ct = context.CancellationToken;
        if (!await requestStream.MoveNext(ct) || requestStream.Current.Header is not { } header)
            throw new ArgumentException("PutArtifact must start with a header message (name, metadata_json, files)");
        limits.Check(header);
        JsonObject metadata;
        try
        {
            metadata = string.IsNullOrWhiteSpace(header.MetadataJson) ? [] : JsonNode.Parse(header.MetadataJson) as JsonObject
                ?? throw new ArgumentException("metadata_json must be a JSON object");
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"metadata_json is not valid JSON: {e.Message}");
        }
        var expected = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var f in header.Files)
        {
            ArtifactNames.CheckFile(f.Name);
            if (f.Bytes < 0 || !expected.TryAdd(f.Name, f.Bytes))
                throw new ArgumentException($"header lists file '{f.Name}' twice or with a negative size");
        }
        // Refused before a byte is stored when the header already says the artifact is too large.
        long declared = 0;
        foreach (long bytes in expected.Values)
        {
            if (bytes > store.MaxArtifactBytes - declared)
                throw new ArtifactTooLargeException(header.Name, store.MaxArtifactBytes, store.LimitSetting);
            declared += bytes;
        }
        using var write = store.Begin(header.Name, metadata);
        var written = expected.Keys.ToDictionary(k => k, _ => 0L, StringComparer.Ordinal);
        foreach (var file in expected.Keys)
        {
            await using var _ = write.CreateFile(file);
        }
        while (await requestStream.MoveNext(ct))
        {
            var data = requestStream.Current.Data ?? throw new ArgumentException("only the first message may be a header");
            if (!written.TryGetValue(data.File, out long have))
                throw new ArgumentException($"data for '{data.File}', which the header does not list");
            if (data.Offset != have)
                throw new ArgumentException($"data for '{data.File}' at offset {data.Offset}, expected {have}: send each file's chunks in order");
            if (have + data.Data.Length > expected[data.File])
                throw new ArgumentException($"'{data.File}' is longer than the {expected[data.File]} bytes the header says");
            await using (var stream = write.CreateFile(data.File))
                await stream.WriteAsync(data.Data.Memory, ct);
            written[data.File] = have + data.Data.Length;
        }
        foreach (var (file, n) in written)
        {
            if (n != expected[file])
                throw new ArgumentException($"'{file}' ended after {n} of the {expected[file]} bytes the header says; nothing was stored");
        }
        return ToProto(await write.CommitAsync(ct));
    });

    public override Task<DeleteArtifactResponse> DeleteArtifact(DeleteArtifactRequest request, ServerCallContext context) =>
        Errors.Guard(() => Task.FromResult(new DeleteArtifactResponse { Deleted = store.Delete(request.Name) }));
}

/// <summary>Maps store failures to statuses that say what to fix.</summary>
internal static class Errors
{
    public static RpcException ToRpc(Exception e) => e switch
    {
        RpcException r => r,
        ArtifactTooLargeException => new RpcException(new Status(StatusCode.ResourceExhausted, e.Message), Contracts.RetryPushback.Never()),
        ArgumentException => new RpcException(new Status(StatusCode.InvalidArgument, e.Message)),
        FileNotFoundException => new RpcException(new Status(StatusCode.NotFound, e.Message)),
        InvalidDataException => new RpcException(new Status(StatusCode.DataLoss, e.Message)),
        OperationCanceledException => new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled")),
        _ => new RpcException(new Status(StatusCode.Internal, $"internal error: {e.Message}")),
    };

    public static T Guard<T>(Func<T> action)
    {
        try
        {
            return action();
        }
        catch (Exception e)
        {
            throw ToRpc(e);
        }
    }

    public static async Task GuardAsync(Func<Task> action)
    {
        try
        {
            await action();
        }
        catch (Exception e)
        {
            throw ToRpc(e);
        }
    }

    public static async Task<T> GuardAsync<T>(Func<Task<T>> action)
    {
        try
        {
            return await action();
        }
        catch (Exception e)
        {
            throw ToRpc(e);
        }
    }
}
