using System.Runtime.CompilerServices;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins;
using TorchSharp;

namespace InterpMesh.Gateway.Routing;

/// <summary>The SDK's model client for plugins: calls go straight to a replica of the job's model.</summary>
internal sealed class RoutedModelClient(ReplicaPool pool, TimeSpan callTimeout) : IModelClient
{
    public string Name => pool.Model;

    private CallOptions Options(CancellationToken ct) => new(deadline: DateTime.UtcNow + callTimeout, cancellationToken: ct);

    private async Task<T> Unary<T>(Func<Contracts.V1.ModelService.ModelServiceClient, AsyncUnaryCall<T>> call)
    {
        for (int attempt = 1; ; attempt++)
        {
            var replica = pool.Pick();
            try
            {
                return await call(replica.Client);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && attempt < pool.Attempts)
            {
                ReplicaPool.MarkDown(replica);
            }
        }
    }

    public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) =>
        Unary(c => c.GetModelInfoAsync(new GetModelInfoRequest(), Options(cancellationToken)));

    public async Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default)
    {
        var request = new TokenizeRequest();
        request.Texts.AddRange(texts);
        var response = await Unary(c => c.TokenizeAsync(request, Options(cancellationToken)));
        return [.. response.Tokens.Select(t => t.Ids.ToArray())];
    }

    public async Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default)
    {
        var request = new DetokenizeRequest();
        request.Tokens.AddRange(tokens.Select(t => new TokenIds { Ids = { t } }));
        var response = await Unary(c => c.DetokenizeAsync(request, Options(cancellationToken)));
        return [.. response.Texts];
    }

    public async IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var replica = pool.Pick();
        using var call = replica.Client.Run(request, Options(cancellationToken));
        string? hook = null;
        byte[]? buffer = null;
        ActivationChunk? head = null;
        while (await Next(call.ResponseStream, replica, cancellationToken))
        {
            var message = call.ResponseStream.Current;
            if (message.Result is { } result)
            {
                yield return new RunOutput(null, null, result);
                continue;
            }
            var chunk = message.Activation;
            if (chunk.Hook != hook)
            {
                hook = chunk.Hook;
                head = chunk;
                buffer = GC.AllocateUninitializedArray<byte>(checked((int)chunk.TotalBytes));
            }
            chunk.Data.Span.CopyTo(buffer.AsSpan((int)chunk.Offset));
            if (chunk.Offset + chunk.Data.Length >= chunk.TotalBytes)
            {
                yield return new RunOutput(hook, WireTensors.ToTensor(head!.Dtype, head.Shape, buffer!), null);
                hook = null;
            }
        }
    }

    public async IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var replica = pool.Pick();
        using var call = replica.Client.Generate(request, Options(cancellationToken));
        while (await Next(call.ResponseStream, replica, cancellationToken))
            yield return call.ResponseStream.Current;
    }

    private async Task<bool> Next<T>(IAsyncStreamReader<T> stream, Replica replica, CancellationToken ct)
    {
        try
        {
            return await stream.MoveNext(ct);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable)
        {
            ReplicaPool.MarkDown(replica);
            throw new RpcException(new Status(StatusCode.Unavailable, $"the model service for '{pool.Model}' at {replica.Address} became unavailable: {e.Status.Detail}"));
        }
    }
}

/// <summary>Wire tensors (little-endian bytes) to CPU torch tensors.</summary>
internal static class WireTensors
{
    public static torch.Tensor ToTensor(DType dtype, IEnumerable<long> shape, byte[] data)
    {
        var type = dtype switch
        {
            DType.Float32 => torch.ScalarType.Float32,
            DType.Bfloat16 => torch.ScalarType.BFloat16,
            DType.Float16 => torch.ScalarType.Float16,
            DType.Int64 => torch.ScalarType.Int64,
            _ => throw new InvalidDataException($"the model service sent a tensor of unknown dtype {dtype}"),
        };
        var t = torch.empty([.. shape], type);
        if (t.NumberOfElements * t.ElementSize != data.Length)
            throw new InvalidDataException($"the model service sent {data.Length} bytes for a tensor of shape [{string.Join(", ", shape)}] and dtype {dtype}");
        data.CopyTo(t.bytes);
        return t;
    }
}
