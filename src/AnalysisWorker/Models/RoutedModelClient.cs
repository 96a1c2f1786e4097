using System.Runtime.CompilerServices;
using Grpc.Core;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins;
using InterpMesh.Routing;
using TorchSharp;

namespace InterpMesh.AnalysisWorker.Models;

/// <summary>
/// The SDK's model client for plugins: calls go straight to a replica of the job's model. A call the
/// model service refuses for load (RESOURCE_EXHAUSTED with <c>grpc-retry-pushback-ms</c>) is retried
/// by the replica's channel policy (<see cref="Replica.PluginRetry"/>) after the time it asks for,
/// before anything was received: a busy service slows a job down rather than failing it. A unary
/// call that meets UNAVAILABLE goes once more to another replica (the pool's failover, which a
/// channel to one replica cannot do); a stream that does marks its replica down and fails.
/// </summary>
internal sealed class RoutedModelClient(ReplicaPool pool, TimeSpan callTimeout) : IModelClient
{
    public string Name => pool.Model;

    /// <summary>Starts a stream on the next replica and reads its first message.</summary>
    private async Task<(TCall Call, Replica Replica, bool Any)> StartAsync<TCall, T>(Func<Contracts.V1.ModelService.ModelServiceClient, TCall> start, Func<TCall, IAsyncStreamReader<T>> stream, CancellationToken ct)
        where TCall : IDisposable
    {
        var replica = pool.Pick();
        var call = start(replica.Client);
        try
        {
            return (call, replica, await Next(stream(call), replica, ct));
        }
        catch
        {
            call.Dispose();
            throw;
        }
    }

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
        var (call, replica, more) = await StartAsync(c => c.Run(request, Options(cancellationToken)), c => c.ResponseStream, cancellationToken);
        using var owned = call;
        var assembler = new ChunkAssembler();
        for (; more; more = await Next(call.ResponseStream, replica, cancellationToken))
        {
            var message = call.ResponseStream.Current;
            if (message.Result is { } result)
            {
                yield return new RunOutput { Result = result };
                continue;
            }
            if (assembler.Add(message.Activation) is { } capture)
                yield return new RunOutput { Hook = capture.Hook, Activation = capture.Tensor.ToTorch(), Gradient = capture.Gradient };
        }
    }

    public async IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (call, replica, more) = await StartAsync(c => c.Generate(request, Options(cancellationToken)), c => c.ResponseStream, cancellationToken);
        using var owned = call;
        for (; more; more = await Next(call.ResponseStream, replica, cancellationToken))
            yield return call.ResponseStream.Current;
    }

    public async IAsyncEnumerable<ModelWeight> GetWeightsAsync(IReadOnlyList<string> names, DType dtype = DType.Unspecified, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = new GetWeightsRequest { Dtype = dtype };
        request.Names.AddRange(names);
        var (call, replica, more) = await StartAsync(c => c.GetWeights(request, Options(cancellationToken)), c => c.ResponseStream, cancellationToken);
        using var owned = call;
        var assembler = new ChunkAssembler();
        for (; more; more = await Next(call.ResponseStream, replica, cancellationToken))
        {
            if (assembler.Add(call.ResponseStream.Current.Chunk) is { } weight)
                yield return new ModelWeight { Name = weight.Hook, Tensor = weight.Tensor.ToTorch() };
        }
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
