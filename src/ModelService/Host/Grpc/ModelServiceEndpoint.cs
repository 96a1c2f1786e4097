using System.Threading.Channels;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Hosting;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using HookInfo = InterpMesh.Runtime.Hooks.HookInfo;
using Intervention = InterpMesh.Runtime.Hooks.Intervention;
using InterventionOp = InterpMesh.Runtime.Hooks.InterventionOp;
using PositionSelection = InterpMesh.Runtime.Hooks.PositionSelection;

namespace InterpMesh.ModelService.Grpc;

/// <summary>The <c>interpmesh.v1.ModelService</c> implementation. Torch work runs on the host's worker thread.</summary>
public sealed class ModelServiceEndpoint(ModelHost host, Telemetry.ServiceMetrics metrics) : Contracts.V1.ModelService.ModelServiceBase
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
            var rows = Rows(model, request.Inputs, "inputs");
            using var admitted = await Admit();
            await Pump(responseStream, context, (writer, ct) => Execute(model, request, rows, writer, ct));
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
            var prompts = Rows(model, request.Prompts, "prompts");
            if (request.MaxNewTokens < 1)
                throw new ArgumentException($"max_new_tokens must be at least 1, got {request.MaxNewTokens}");
            var sampling = new SamplingOptions(request.Sampling?.Temperature ?? 0, request.Sampling?.TopK ?? 0,
                request.Sampling is { TopP: > 0 } s ? s.TopP : 1.0, request.Sampling?.Seed ?? 0);
            sampling.Validate();
            var stops = request.StopTokenIds.Count > 0 ? request.StopTokenIds.ToList()
                : !request.NoDefaultStop && (model.Tokenizer?.EosId ?? model.Config.EosTokenId) is int eos ? [eos] : [];
            using var admitted = await Admit();
            await Pump(responseStream, context, (writer, ct) =>
            {
                int step = 0;
                var (captures, reductions) = Captures(model.Transformer, request.Captures, prompts.Count, prompts.Max(p => p.Count));
                var plan = HookPlan.Build(model.Transformer.Hooks, captures, Interventions(request.Interventions));
                CaptureSink? sink = captures.Count == 0 ? null
                    : (hook, value) => WriteChunks(hook, value, reductions, chunk => new GenerateResponse { Step = step, Activation = chunk }, writer, ct);
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

    /// <summary>Runs on the worker thread: the forward, streaming captures as each stage completes.</summary>
    private void Execute(LoadedModel model, RunRequest request, List<IReadOnlyList<int>> rows, ChannelWriter<RunResponse> writer, CancellationToken ct)
    {
        var transformer = model.Transformer;
        var (ids, mask) = TokenBatch.Pad(rows, request.Padding == Contracts.V1.Padding.Right ? PaddingSide.Right : PaddingSide.Left, transformer.Device);
        int batch = rows.Count, length = (int)ids.shape[1];
        metrics.BatchSize.Record(batch);
        metrics.Tokens.Add(rows.Sum(r => r.Count));

        var (captures, reductions) = Captures(transformer, request.Captures, batch, length);
        var plan = HookPlan.Build(transformer.Hooks, captures, Interventions(request.Interventions));

        void Send(HookInfo hook, torch.Tensor value) =>
            WriteChunks(hook, value, reductions, chunk => new RunResponse { Activation = chunk }, writer, ct);

        var logitsMode = request.Logits?.Mode switch
        {
            LogitsRequest.Types.Mode.Last => LogitsMode.Last,
            LogitsRequest.Types.Mode.All => LogitsMode.All,
            _ => LogitsMode.None,
        };
        var logits = transformer.Forward(ids, mask, plan, Send, request.Loss ? LogitsMode.All : logitsMode);
        var result = new RunResult { Tokens = TensorWire.ToWire(ids), AttentionMask = TensorWire.ToWire(mask.to(ScalarType.Int64)) };
        if (logits is not null)
        {
            if (request.Loss)
            {
                var targets = ids[.., 1..];
                var valid = mask[.., 1..].logical_and(mask[.., ..^1]);
                var losses = F.cross_entropy(logits[.., ..^1].reshape(-1, logits.shape[2]).to(ScalarType.Float32), targets.reshape(-1), reduction: nn.Reduction.None);
                var count = valid.sum().item<long>();
                if (count > 0)
                    result.Loss = (losses * valid.reshape(-1)).sum().item<float>() / count;
                if (logitsMode == LogitsMode.Last)
                {
                    var last = (mask.to(ScalarType.Int64) * arange(length, dtype: ScalarType.Int64)).amax([1]);
                    logits = logits.gather(1, last.view(-1, 1, 1).expand(batch, 1, logits.shape[2]));
                }
            }
            if (logitsMode != LogitsMode.None)
            {
                int k = request.Logits!.TopK;
                if (k < 0)
                    throw new ArgumentException($"logits.top_k must be 0 (full rows) or positive, got {k}");
                if (k > 0)
                {
                    var (values, indices) = logits.to(ScalarType.Float32).topk(Math.Min(k, (int)logits.shape[2]), -1);
                    result.TopK = new TopK { Ids = TensorWire.ToWire(indices), Values = TensorWire.ToWire(values) };
                }
                else
                {
                    result.Logits = TensorWire.ToWire(logits.to(ScalarType.Float32));
                }
            }
        }
        writer.WriteAsync(new RunResponse { Result = result }, ct).AsTask().GetAwaiter().GetResult();
    }

    /// <summary>Resolves a request's captures, checking them against the per-request byte budget.</summary>
    private (List<CaptureRequest> Captures, Dictionary<string, Reduction> Reductions) Captures(Transformer transformer, IEnumerable<Capture> wire, int batch, int length)
    {
        var captures = new List<CaptureRequest>();
        var reductions = new Dictionary<string, Reduction>(StringComparer.Ordinal);
        long budget = 0;
        foreach (var c in wire)
        {
            var positions = c.Positions?.SelectionCase switch
            {
                Contracts.V1.PositionSelection.SelectionOneofCase.Last => PositionSelection.Last,
                Contracts.V1.PositionSelection.SelectionOneofCase.Indices => PositionSelection.At([.. c.Positions.Indices.Ids]),
                _ => PositionSelection.All,
            };
            var dtype = c.Dtype == DType.Unspecified ? ScalarType.Float32 : TensorWire.FromWire(c.Dtype, "capture");
            if (dtype == ScalarType.Int64)
                throw new ArgumentException("capture dtype must be FLOAT32, BFLOAT16 or FLOAT16");
            captures.Add(new CaptureRequest([.. c.Hooks], positions, dtype));
            long selected = positions.Kind switch { "last" => 1, "indices" => positions.Indices!.Count, _ => length };
            foreach (var hook in transformer.Hooks.Resolve(c.Hooks))
            {
                reductions[hook.Name] = c.Reduction;
                budget += HookCatalogue.ElementCount(hook, transformer.Config, batch, c.Reduction == Reduction.Mean ? 1 : selected, length) * (dtype == ScalarType.Float32 ? 4 : 2);
            }
        }
        if (budget > host.Options.MaxCaptureBytes)
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"the requested captures need {budget:N0} bytes, over this server's per-request budget of {host.Options.MaxCaptureBytes:N0}; capture fewer hooks, fewer positions (last or indices), a smaller batch, or bfloat16"));
        return (captures, reductions);
    }

    /// <summary>Streams one capture as chunks of at most MaxChunkBytes; blocks while the client is slow (back-pressure).</summary>
    private void WriteChunks<T>(HookInfo hook, torch.Tensor value, Dictionary<string, Reduction> reductions, Func<ActivationChunk, T> wrap, ChannelWriter<T> writer, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (reductions.TryGetValue(hook.Name, out var r) && r == Reduction.Mean)
            value = value.to(ScalarType.Float32).mean([hook.Layout == HookLayout.AttentionMap ? 2L : 1L], keepdim: true).to(value.dtype);
        var bytes = TensorWire.Bytes(value);
        metrics.ActivationBytes.Add(bytes.Length);
        int chunk = host.Options.MaxChunkBytes;
        for (int offset = 0; offset == 0 || offset < bytes.Length; offset += chunk)
        {
            var piece = new ActivationChunk
            {
                Hook = hook.Name,
                Dtype = TensorWire.ToWire(value.dtype),
                Offset = offset,
                TotalBytes = bytes.Length,
                Data = UnsafeByteOperations.UnsafeWrap(bytes.AsMemory(offset, Math.Min(chunk, bytes.Length - offset))),
            };
            piece.Shape.AddRange(value.shape);
            writer.WriteAsync(wrap(piece), ct).AsTask().GetAwaiter().GetResult();
            if (bytes.Length == 0)
                break;
        }
    }

    private List<IReadOnlyList<int>> Rows(LoadedModel model, IEnumerable<Input> inputs, string field)
    {
        var rows = new List<IReadOnlyList<int>>();
        foreach (var input in inputs)
        {
            int[] ids = input.ContentCase switch
            {
                Input.ContentOneofCase.Text => model.RequireTokenizer().Encode(input.Text),
                Input.ContentOneofCase.Tokens => [.. input.Tokens.Ids],
                _ => throw new ArgumentException($"{field}[{rows.Count}] is empty: set text or tokens"),
            };
            if (ids.Length == 0)
                throw new ArgumentException($"{field}[{rows.Count}] has no tokens");
            if (ids.Length > model.Config.ContextLength)
                throw new ArgumentException($"{field}[{rows.Count}] has {ids.Length} tokens, more than the model's context length of {model.Config.ContextLength}");
            foreach (var id in ids)
            {
                if (id < 0 || id >= model.Config.VocabSize)
                    throw new ArgumentException($"{field}[{rows.Count}] has token id {id}, outside the vocabulary (0..{model.Config.VocabSize - 1})");
            }
            rows.Add(ids);
        }
        if (rows.Count == 0)
            throw new ArgumentException($"{field} is empty; send at least one");
        if (rows.Count > host.Options.MaxBatch)
            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"{rows.Count} {field} exceed this server's batch limit of {host.Options.MaxBatch}; split the request"));
        return rows;
    }

    private static List<Intervention> Interventions(IEnumerable<Contracts.V1.Intervention> wire) =>
        wire.Select((iv, i) =>
        {
            var op = iv.Op switch
            {
                Contracts.V1.InterventionOp.Add => InterventionOp.Add,
                Contracts.V1.InterventionOp.Set => InterventionOp.Set,
                Contracts.V1.InterventionOp.Scale => InterventionOp.Scale,
                Contracts.V1.InterventionOp.ZeroAblate => InterventionOp.ZeroAblate,
                Contracts.V1.InterventionOp.MeanAblate => InterventionOp.MeanAblate,
                _ => throw new ArgumentException($"interventions[{i}] on '{iv.Hook}' has no op; use ADD, SET, SCALE, ZERO_ABLATE or MEAN_ABLATE"),
            };
            if (op == InterventionOp.Scale && !double.IsFinite(iv.Scale))
                throw new ArgumentException($"interventions[{i}]: scale must be finite");
            var value = iv.Value is null || iv.Value.Dtype == DType.Unspecified && iv.Value.Data.IsEmpty ? null : TensorWire.FromWire(iv.Value, $"interventions[{i}].value");
            return new Intervention(iv.Hook, op, value, iv.Scale,
                iv.Heads.Count > 0 ? iv.Heads.ToList() : null, iv.Positions.Count > 0 ? iv.Positions.ToList() : null);
        }).ToList();

    /// <summary>Admission control: a full server answers RESOURCE_EXHAUSTED at once instead of queueing without bound.</summary>
    private async Task<IDisposable> Admit()
    {
        if (!await host.Admission.WaitAsync(0))
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
}
