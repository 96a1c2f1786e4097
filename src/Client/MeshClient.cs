using System.Runtime.CompilerServices;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using InterpMesh.Contracts;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Client;

/// <summary>
/// A connection to a gateway (or one model service): the channel with the mesh's streaming
/// settings (<see cref="Channels.ForAddress"/>), the API key and model name sent with every call,
/// and the calls a researcher's program makes — model runs with activations assembled from their
/// chunks, analysis jobs, artifacts. gRPC failures surface as <see cref="RpcException"/> with the
/// server's message. Dispose it to close the connection.
/// </summary>
public sealed partial class MeshClient : IDisposable
{
    /// <summary>The header a gateway reads the target model from.</summary>
    public const string ModelHeader = Contracts.Headers.Model;

    private readonly GrpcChannel channel;

    private MeshClient(Uri url, GrpcChannel channel, CallInvoker invoker)
    {
        Url = url;
        this.channel = channel;
        Models = new ModelService.ModelServiceClient(invoker);
        Analyses = new AnalysisService.AnalysisServiceClient(invoker);
        ArtifactService = new ArtifactService.ArtifactServiceClient(invoker);
    }

    /// <summary>Where calls go.</summary>
    public Uri Url { get; }

    /// <summary>The generated ModelService client (with this connection's headers).</summary>
    public ModelService.ModelServiceClient Models { get; }

    /// <summary>The generated AnalysisService client (with this connection's headers).</summary>
    public AnalysisService.AnalysisServiceClient Analyses { get; }

    /// <summary>The generated ArtifactService client (with this connection's headers).</summary>
    public ArtifactService.ArtifactServiceClient ArtifactService { get; }

    /// <summary>
    /// Connects to <paramref name="url"/> (<c>http(s)://host:port</c>, or <c>dns:///host:port</c> to spread
    /// calls over every address of a name). <paramref name="apiKey"/> goes as <c>authorization: Bearer</c>;
    /// <paramref name="model"/> as the <c>interpmesh-model</c> header, for gateways serving several models.
    /// <para>
    /// Calls are retried by gRPC's channel policy, <paramref name="retry"/> (null: <see cref="ChannelRetry.Default"/>):
    /// by default UNAVAILABLE and RESOURCE_EXHAUSTED, up to 5 attempts, each after the wait the server
    /// asks for (<c>grpc-retry-pushback-ms</c>) — a busy server or a rate limit is waited out rather than
    /// surfaced — and only before any response has arrived, so nothing is received twice. A refusal the
    /// server marks permanent (a request over a limit, a key's job quota) is not retried. Pass
    /// <see cref="ChannelRetry.None"/> to handle every status yourself.
    /// </para>
    /// </summary>
    /// <exception cref="ArgumentException">The URL is not one of those forms.</exception>
    public static MeshClient Connect(string url, string? apiKey = null, string? model = null, ChannelRetry? retry = null)
    {
        ArgumentNullException.ThrowIfNull(url);
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https" or "dns"))
            throw new ArgumentException($"the server address must be an http:// or https:// URL such as http://127.0.0.1:50050 (or dns:///host:port), got '{Short(url)}'", nameof(url));
        var headers = new List<(string, string)>();
        if (!string.IsNullOrEmpty(apiKey))
            headers.Add(("authorization", $"Bearer {apiKey}"));
        if (!string.IsNullOrEmpty(model))
            headers.Add((ModelHeader, model));
        var channel = Channels.ForAddress(uri.Scheme == "dns" ? url : uri.ToString(), retry);
        var invoker = channel.Intercept(metadata =>
        {
            foreach (var (name, value) in headers)
                metadata.Add(name, value);
            return metadata;
        });
        return new MeshClient(uri, channel, invoker);
    }

    private static string Short(string text) => text.Length > 60 ? text[..60] + "…" : text;

    // ---- Models ----

    /// <summary>Architecture, dimensions, hook catalogue, tokenizer and limits of the model.</summary>
    public async Task<ModelInfo> GetModelInfoAsync(CancellationToken cancellationToken = default) =>
        await Models.GetModelInfoAsync(new GetModelInfoRequest(), cancellationToken: cancellationToken).ConfigureAwait(false);

    /// <summary>Token ids of each text.</summary>
    public async Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default)
    {
        var request = new TokenizeRequest();
        request.Texts.AddRange(texts);
        var response = await Models.TokenizeAsync(request, cancellationToken: cancellationToken).ConfigureAwait(false);
        return [.. response.Tokens.Select(t => t.Ids.ToArray())];
    }

    /// <summary>Text of each id sequence.</summary>
    public async Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default)
    {
        var request = new DetokenizeRequest();
        request.Tokens.AddRange(tokens.Select(t => new TokenIds { Ids = { t } }));
        var response = await Models.DetokenizeAsync(request, cancellationToken: cancellationToken).ConfigureAwait(false);
        return [.. response.Texts];
    }

    /// <summary>
    /// Runs one forward: yields each captured activation whole (its chunks assembled and checked) as
    /// soon as it has arrived, then the result (logits, loss, receipts).
    /// </summary>
    public async IAsyncEnumerable<RunItem> RunAsync(RunRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = Models.Run(request, cancellationToken: cancellationToken);
        var assembler = new ChunkAssembler();
        await foreach (var message in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (message.Result is { } result)
                yield return new RunItem { Result = result };
            else if (message.Activation is { } chunk && assembler.Add(chunk) is { } activation)
                yield return new RunItem { Hook = activation.Hook, Activation = activation.Tensor, Gradient = activation.Gradient };
        }
    }

    /// <summary>
    /// Generates: yields each step's tokens and each per-step capture whole, in the order they arrive.
    /// </summary>
    public async IAsyncEnumerable<GenerateItem> GenerateAsync(GenerateRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = Models.Generate(request, cancellationToken: cancellationToken);
        var assembler = new ChunkAssembler();
        await foreach (var message in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (message.Activation is { } chunk)
            {
                if (assembler.Add(chunk) is { } activation)
                    yield return new GenerateItem { Step = message.Step, Hook = activation.Hook, Activation = activation.Tensor };
                continue;
            }
            yield return new GenerateItem { Step = message.Step, Tokens = message };
        }
    }

    /// <summary>
    /// Streams weights by TransformerLens name or glob (e.g. <c>blocks.*.attn.W_O</c>), each whole
    /// (its chunks assembled and checked) as soon as it has arrived, in model order. Float32 unless
    /// <paramref name="dtype"/> asks for BFLOAT16 or FLOAT16.
    /// </summary>
    public async IAsyncEnumerable<AssembledActivation> GetWeightsAsync(IReadOnlyList<string> names, DType dtype = DType.Unspecified, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = new GetWeightsRequest { Dtype = dtype };
        request.Names.AddRange(names);
        using var call = Models.GetWeights(request, cancellationToken: cancellationToken);
        var assembler = new ChunkAssembler();
        await foreach (var message in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (assembler.Add(message.Chunk) is { } weight)
                yield return weight;
        }
    }

    /// <summary>Closes the connection.</summary>
    public void Dispose() => channel.Dispose();
}

/// <summary>One item of <see cref="MeshClient.RunAsync"/>: a captured activation, or the result.</summary>
public sealed class RunItem
{
    /// <summary>The captured hook, or null for the result.</summary>
    public string? Hook { get; init; }

    /// <summary>The activation (dtype, shape, bytes), or null for the result.</summary>
    public WireTensor? Activation { get; init; }

    /// <summary>True when <see cref="Activation"/> is the gradient d metric / d activation of <see cref="Hook"/> (RunRequest.gradient).</summary>
    public bool Gradient { get; init; }

    /// <summary>The result, after every activation, or null for an activation.</summary>
    public RunResult? Result { get; init; }
}

/// <summary>One item of <see cref="MeshClient.GenerateAsync"/>: a step's tokens, or one of its captures.</summary>
public sealed class GenerateItem
{
    /// <summary>The generation step (0 for the first new token).</summary>
    public int Step { get; init; }

    /// <summary>The step's message (ids per row, text, receipts on the last), or null for a capture.</summary>
    public GenerateResponse? Tokens { get; init; }

    /// <summary>The captured hook, or null for tokens.</summary>
    public string? Hook { get; init; }

    /// <summary>The captured activation at this step, or null for tokens.</summary>
    public WireTensor? Activation { get; init; }
}
