using System.Threading.Channels;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Batching;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;

namespace InterpMesh.ModelService.Grpc;

/// <summary>The <c>interpmesh.v1.ModelService</c> implementation. Torch work runs on the host's worker thread.</summary>
public sealed class ModelServiceEndpoint(ModelHost host, Telemetry.ServiceMetrics metrics, CaptureStreaming streaming, RunBatcher batcher) : Contracts.V1.ModelService.ModelServiceBase
{
    private LoadedModel Model => host.Model
        ?? throw new RpcException(new Status(StatusCode.Unavailable, host.LoadError is null ? "the model is still loading; retry shortly" : $"the model failed to load: {host.LoadError.Message}"));

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context)
    {
        var m = Model;
        var c = m.Config;
        var info = new ModelInfo
        {
            Architecture = c.Architecture,
            NLayers = c.NLayers,
            DModel = c.DModel,
            NHeads = c.NHeads,
            NKvHeads = c.NKvHeads,
            DHead = c.DHead,
            DMlp = c.DMlp,
            VocabSize = c.VocabSize,
            ContextLength = c.ContextLength,
            Dtype = TensorWire.ToWire(m.Transformer.DType),
            Device = m.Transformer.Device.ToString(),
            Tokenizer = m.Tokenizer?.GetType().Name ?? "",
            TokenizerAddsBos = m.Tokenizer?.AddsBos ?? false,
            Source = m.Source,
        };
        if ((m.Tokenizer?.BosId ?? c.BosTokenId) is int bos)
            info.BosTokenId = bos;
        if ((m.Tokenizer?.EosId ?? c.EosTokenId) is int eos)
            info.EosTokenId = eos;
        info.Hooks.AddRange(m.Transformer.Hooks.All.Select(h => new Contracts.V1.HookInfo { Name = h.Name, Shape = h.Shape, Layer = h.Layer }));
        return Task.FromResult(info);
    }

    public override Task<TokenizeResponse> Tokenize(TokenizeRequest request, ServerCallContext context) => Guard(() =>
    {
        var tokenizer = Model.RequireTokenizer();
        var response = new TokenizeResponse();
        foreach (var text in request.Texts)
        {
            var ids = new TokenIds();
            ids.Ids.AddRange(tokenizer.Encode(text));
            response.Tokens.Add(ids);
        }
        return Task.FromResult(response);
    });

    public override Task<DetokenizeResponse> Detokenize(DetokenizeRequest request, ServerCallContext context) => Guard(() =>
    {
        var tokenizer = Model.RequireTokenizer();
        var response = new DetokenizeResponse();
        foreach (var ids in request.Tokens)
        {
            foreach (var id in ids.Ids)
            {
                if (id < 0 || id >= tokenizer.VocabSize)
                    throw new ArgumentException($"token id {id} is outside the vocabulary (0..{tokenizer.VocabSize - 1})");
            }
            response.Texts.Add(tokenizer.Decode(ids.Ids.ToList()));
        }
        return Task.FromResult(response);
    });

    public override async Task Run(RunRequest request, IServerStreamWriter<RunResponse> responseStream, ServerCallContext context)
    {
        try
        {
            var model = Model;
            var rows = WireRequests.Rows(model, request.Inputs, "inputs", host.Options.MaxBatch);
            if (request.Logits is { TopK: < 0 } logits)
                throw new ArgumentException($"logits.top_k must be 0 (full rows) or positive, got {logits.TopK}");
            var captures = streaming.Resolve(model.Transformer, request.Captures, rows.Count, rows.Max(r => r.Count));
            HookPlan.Build(model.Transformer.Hooks, captures.Requests, null);
            foreach (var iv in request.Interventions)
                model.Transformer.Hooks.Resolve([iv.Hook]);
            using var admitted = await Admit(context.CancellationToken);
            var ct = context.CancellationToken;
            var pending = new PendingRun(request, rows, captures, RunBatcher.Key(model.Transformer, request, rows), ct);
            batcher.Submit(pending);
            await foreach (var message in pending.Output.Reader.ReadAllAsync(ct))
                await responseStream.WriteAsync(message, ct);
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e);
        }
    }

    public override async Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context)
    {
        try
        {
            var model = Model;
            var prompts = WireRequests.Rows(model, request.Prompts, "prompts", host.Options.MaxBatch);
            if (request.MaxNewTokens < 1)
                throw new ArgumentException($"max_new_tokens must be at least 1, got {request.MaxNewTokens}");
            var sampling = new SamplingOptions(request.Sampling?.Temperature ?? 0, request.Sampling?.TopK ?? 0,
                request.Sampling is { TopP: > 0 } s ? s.TopP : 1.0, request.Sampling?.Seed ?? 0);
            sampling.Validate();
            var stops = request.StopTokenIds.Count > 0 ? request.StopTokenIds.ToList()
                : !request.NoDefaultStop ? [.. DefaultStops(model)] : [];
            using var admitted = await Admit(context.CancellationToken);
            var trace = System.Diagnostics.Activity.Current?.Context ?? default;
            await Pump(responseStream, context, (writer, ct) =>
            {
                using var activity = Telemetry.ServiceTracing.Source.StartActivity("interpmesh.generate", System.Diagnostics.ActivityKind.Internal, trace);
                activity?.SetTag("interpmesh.batch_size", prompts.Count);
                activity?.SetTag("interpmesh.max_new_tokens", request.MaxNewTokens);
                int step = 0;
                var captures = streaming.Resolve(model.Transformer, request.Captures, prompts.Count, prompts.Max(p => p.Count));
                var plan = HookPlan.Build(model.Transformer.Hooks, captures.Requests, WireRequests.Interventions(request.Interventions));
                CaptureSink? sink = captures.Requests.Count == 0 ? null
                    : (hook, value) => streaming.Write(hook, value, captures.Reductions, chunk => new GenerateResponse { Step = step, Activation = chunk }, writer, ct);
                TextGenerator.Generate(model.Transformer, prompts, new GenerationOptions(request.MaxNewTokens, sampling, stops), plan, sink, (s, ids) =>
                {
                    step = s + 1;
                    metrics.Tokens.Add(ids.Count(id => id >= 0) + (s == 0 ? prompts.Sum(p => p.Count) : 0));
                    var message = new GenerateResponse { Step = s };
                    message.TokenIds.AddRange(ids);
                    if (model.Tokenizer is { } tok)
                        message.Texts.AddRange(ids.Select(id => id < 0 ? "" : tok.Decode([id])));
                    if (s == 0)
                        message.PromptTokens.AddRange(prompts.Select(p => { var t = new TokenIds(); t.Ids.AddRange(p); return t; }));
                    writer.WriteAsync(message, ct).AsTask().GetAwaiter().GetResult();
                }, ct);
            });
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e);
        }
    }

    /// <summary>
    /// Runs <paramref name="produce"/> on the torch worker and forwards what it writes to the client.
    /// The channel is small and the worker blocks on it, so a slow client slows the producer instead
    /// of making the server buffer the whole response.
    /// </summary>
    private async Task Pump<T>(IServerStreamWriter<T> responseStream, ServerCallContext context, Action<ChannelWriter<T>, CancellationToken> produce)
    {
        var channel = Channel.CreateBounded<T>(new BoundedChannelOptions(4) { SingleReader = true, SingleWriter = true });
        var ct = context.CancellationToken;
        var work = host.Worker.RunAsync(() =>
        {
            var busy = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                produce(channel.Writer, ct);
                channel.Writer.TryComplete();
            }
            catch (Exception e)
            {
                channel.Writer.TryComplete(e);
            }
            metrics.WorkerBusy.Add(busy.Elapsed.TotalSeconds);
            return 0;
        }, ct);
        await foreach (var message in channel.Reader.ReadAllAsync(ct))
            await responseStream.WriteAsync(message, ct);
        await work;
    }

    /// <summary>
    /// Admission control: a request waits at most <c>AdmissionWaitMs</c>, in arrival order, for a
    /// slot; then a full server answers RESOURCE_EXHAUSTED instead of queueing without bound.
    /// </summary>
    private async Task<IDisposable> Admit(CancellationToken ct)
    {
        if (!await host.Admission.WaitAsync(host.Options.AdmissionWaitMs, ct))
        {
            var metadata = new Metadata { { "retry-after-ms", "200" } };
            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"the server is running its maximum of {host.Options.MaxConcurrentRequests} requests; retry after a short delay"), metadata);
        }
        return new Release(host.Admission);
    }

    private sealed class Release(SemaphoreSlim semaphore) : IDisposable
    {
        public void Dispose() => semaphore.Release();
    }

    private static T Guard<T>(Func<T> action)
    {
        try
        {
            return action();
        }
        catch (Exception e)
        {
            throw RpcErrors.ToRpc(e);
        }
    }

    /// <summary>The tokenizer's EOS and every <c>eos_token_id</c> of the config (it may be a list, e.g. Llama 3 instruct).</summary>
    private static IEnumerable<int> DefaultStops(LoadedModel model) =>
        (model.Tokenizer?.EosId is int eos ? [eos] : Array.Empty<int>()).Concat(model.Config.EosTokenIds).Distinct();
}
