using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Plugins;
using InterpMesh.Runtime;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using RuntimeArch = InterpMesh.Runtime.Architectures;
using RuntimeHooks = InterpMesh.Runtime.Hooks;

namespace InterpMesh.ModelService.Wire;

/// <summary>
/// The one place where ModelService protos meet the engine: requests become specs, engine outputs
/// become messages (captures split into chunks under the message size limit, without copying).
/// </summary>
public static class WireMapping
{
    /// <summary>The model's description and this server's limits (<paramref name="maxChunkBytes"/>: the largest activation chunk per message).</summary>
    public static ModelInfo Info(Engine.ModelEngine engine, int maxChunkBytes)
    {
        var m = engine.Model;
        var c = m.Config;
        var info = new ModelInfo
        {
            Architecture = c.Architecture,
            ModelType = c.ModelType,
            FinalLogitSoftcap = c.FinalSoftcap ?? 0,
            NLayers = c.NLayers,
            DModel = c.DModel,
            NHeads = c.NHeads,
            NKvHeads = c.NKvHeads,
            DHead = c.DHead,
            DMlp = c.DMlp,
            VocabSize = c.VocabSize,
            ContextLength = c.ContextLength,
            Dtype = m.Transformer.DType.ToWireDType(),
            Device = m.Transformer.Device.ToString(),
            Tokenizer = m.Tokenizer?.GetType().Name ?? "",
            TokenizerAddsBos = m.Tokenizer?.AddsBos ?? false,
            Source = m.Source,
            Limits = new ServingLimits
            {
                MaxBatch = engine.Options.MaxBatch,
                MaxForwardRows = engine.Options.BatchMaxRows,
                MaxDecodeRows = engine.Options.MaxDecodeRows,
                MaxCaptureBytes = engine.Options.MaxCaptureBytes,
                MaxChunkBytes = maxChunkBytes,
                OutputBufferBytes = engine.Options.OutputBufferBytes,
                StallTimeoutSeconds = engine.Options.StallTimeout.TotalSeconds,
                MaxGradientBytes = engine.Options.GradientMemoryBytes,
            },
        };
        if ((m.Tokenizer?.BosId ?? c.BosTokenId) is int bos)
            info.BosTokenId = bos;
        if ((m.Tokenizer?.EosId ?? c.EosTokenId) is int eos)
            info.EosTokenId = eos;
        info.Hooks.AddRange(m.Transformer.Hooks.All.Select(h => new Contracts.V1.HookInfo { Name = h.Name, Shape = h.Shape, Layer = h.Layer, Dims = { RuntimeHooks.HookCatalogue.DimensionNames(h) } }));
        return info;
    }

    /// <summary>Maps a RunRequest; creates intervention value tensors the caller disposes (<see cref="DisposeValues"/>).</summary>
    public static RunSpec ToSpec(RunRequest request) => new()
    {
        Inputs = Inputs(request.Inputs),
        Captures = Captures(request.Captures),
        Interventions = Interventions(request.Interventions),
        Logits = request.Logits?.Mode switch
        {
            LogitsRequest.Types.Mode.Last => RuntimeArch.LogitsMode.Last,
            LogitsRequest.Types.Mode.All => RuntimeArch.LogitsMode.All,
            _ => RuntimeArch.LogitsMode.None,
        },
        TopK = request.Logits?.TopK ?? 0,
        Loss = request.Loss,
        Padding = request.Padding == Contracts.V1.Padding.Right ? PaddingSide.Right : PaddingSide.Left,
        Gradient = request.Gradient is { } g ? Gradient(g) : null,
    };

    private static GradientSpec Gradient(GradientRequest g) => new()
    {
        Metric = g.MetricCase switch
        {
            GradientRequest.MetricOneofCase.Loss when g.Loss => GradientMetric.Loss,
            GradientRequest.MetricOneofCase.Logit => GradientMetric.Logit,
            GradientRequest.MetricOneofCase.LogProb => GradientMetric.LogProb,
            GradientRequest.MetricOneofCase.LogitDifference => GradientMetric.LogitDifference,
            _ => GradientMetric.Unset,
        },
        Tokens = g.MetricCase switch
        {
            GradientRequest.MetricOneofCase.Logit => [.. g.Logit.Tokens],
            GradientRequest.MetricOneofCase.LogProb => [.. g.LogProb.Tokens],
            _ => [],
        },
        Position = g.MetricCase switch
        {
            GradientRequest.MetricOneofCase.Logit => g.Logit.Position,
            GradientRequest.MetricOneofCase.LogProb => g.LogProb.Position,
            _ => null,
        },
        Correct = g.LogitDifference?.Correct.Select(set => (IReadOnlyList<int>)[.. set.Ids]).ToList() ?? [],
        Incorrect = g.LogitDifference?.Incorrect.Select(set => (IReadOnlyList<int>)[.. set.Ids]).ToList() ?? [],
        Hooks = [.. g.Hooks],
        Positions = Positions(g.Positions),
        DType = g.Dtype == DType.Unspecified ? TorchSharp.torch.ScalarType.Float32
            : g.Dtype == DType.Int64 || WireTensor.ElementSize(g.Dtype) is null ? throw new InvalidRequestException($"gradient.dtype must be FLOAT32, BFLOAT16 or FLOAT16, got {g.Dtype}")
            : g.Dtype.ToScalarType(),
    };

    private static RuntimeHooks.PositionSelection Positions(Contracts.V1.PositionSelection? positions) => positions?.SelectionCase switch
    {
        Contracts.V1.PositionSelection.SelectionOneofCase.Last => RuntimeHooks.PositionSelection.Last,
        Contracts.V1.PositionSelection.SelectionOneofCase.Indices => RuntimeHooks.PositionSelection.At([.. positions.Indices.Ids]),
        _ => RuntimeHooks.PositionSelection.All,
    };

    /// <summary>Maps a GenerateRequest. Proto3 zeros mean "unset": top_p 0 is no limit; a negative or NaN top_p is refused by the engine.</summary>
    public static GenerateSpec ToSpec(GenerateRequest request) => new()
    {
        Prompts = Inputs(request.Prompts),
        MaxNewTokens = request.MaxNewTokens,
        Sampling = new SamplingOptions(
            request.Sampling?.Temperature ?? 0,
            request.Sampling?.TopK ?? 0,
            request.Sampling is { } s && s.TopP != 0 ? s.TopP : 1.0,
            request.Sampling?.Seed ?? 0),
        StopIds = request.StopTokenIds.Count > 0 ? [.. request.StopTokenIds] : request.NoDefaultStop ? [] : null,
        Captures = Captures(request.Captures),
        Interventions = Interventions(request.Interventions),
    };

    /// <summary>
    /// The Generate messages for one engine output: a capture as its step's chunks of at most
    /// <paramref name="maxChunkBytes"/>, a step as its tokens (and text, with a tokenizer). The gRPC
    /// endpoint and the in-process client both send exactly these.
    /// </summary>
    public static IEnumerable<GenerateResponse> GenerateMessages(EngineOutput output, Runtime.Tokenization.ITextTokenizer? tokenizer, int maxChunkBytes) => output switch
    {
        CaptureOutput capture => Chunks(capture, maxChunkBytes).Select(c => new GenerateResponse { Step = capture.Step, Activation = c }),
        GenerateStep step => [ToProto(step, tokenizer)],
        _ => [],
    };

    /// <summary>Frees the value tensors a mapped spec created (the engine keeps its own copies).</summary>
    public static void DisposeValues(IEnumerable<RuntimeHooks.Intervention> interventions)
    {
        foreach (var iv in interventions)
            iv.Value?.Dispose();
    }

    private static List<InputSpec> Inputs(IEnumerable<Input> inputs) => inputs.Select(i => i.ContentCase switch
    {
        Input.ContentOneofCase.Text => InputSpec.FromText(i.Text),
        Input.ContentOneofCase.Tokens => InputSpec.FromIds([.. i.Tokens.Ids]),
        _ => InputSpec.Empty,
    }).ToList();

    private static List<CaptureSpec> Captures(IEnumerable<Capture> captures) => captures.Select((c, i) => new CaptureSpec
    {
        Hooks = [.. c.Hooks],
        Positions = Positions(c.Positions),
        DType = c.Dtype == DType.Unspecified ? TorchSharp.torch.ScalarType.Float32
            : c.Dtype == DType.Int64 ? throw new InvalidRequestException($"captures[{i}]: dtype must be FLOAT32, BFLOAT16 or FLOAT16")
            : WireTensor.ElementSize(c.Dtype) is null ? throw new InvalidRequestException($"captures[{i}]: dtype must be FLOAT32, BFLOAT16 or FLOAT16, got {c.Dtype}")
            : c.Dtype.ToScalarType(),
        Reduction = c.Reduction == Contracts.V1.Reduction.Mean ? CaptureReduction.Mean : CaptureReduction.None,
    }).ToList();

    private static List<RuntimeHooks.Intervention> Interventions(IEnumerable<Contracts.V1.Intervention> wire)
    {
        var list = new List<RuntimeHooks.Intervention>();
        try
        {
            foreach (var iv in wire)
            {
                int i = list.Count;
                var op = iv.Op switch
                {
                    InterventionOp.Add => RuntimeHooks.InterventionOp.Add,
                    InterventionOp.Set => RuntimeHooks.InterventionOp.Set,
                    InterventionOp.Scale => RuntimeHooks.InterventionOp.Scale,
                    InterventionOp.ZeroAblate => RuntimeHooks.InterventionOp.ZeroAblate,
                    InterventionOp.MeanAblate => RuntimeHooks.InterventionOp.MeanAblate,
                    _ => throw new InvalidRequestException($"interventions[{i}] on {InvalidRequestException.Quote(iv.Hook)} has no op; use ADD, SET, SCALE, ZERO_ABLATE or MEAN_ABLATE"),
                };
                var value = iv.Value is null || iv.Value.Dtype == DType.Unspecified && iv.Value.Data.IsEmpty ? null : TensorWire.FromWire(iv.Value, $"interventions[{i}].value");
                list.Add(new RuntimeHooks.Intervention(iv.Hook, op, value, iv.Scale,
                    iv.Heads.Count > 0 ? iv.Heads.ToList() : null, iv.Positions.Count > 0 ? iv.Positions.ToList() : null,
                    iv.Rows.Count > 0 ? iv.Rows.ToList() : null));
            }
            return list;
        }
        catch
        {
            DisposeValues(list);
            throw;
        }
    }

    /// <summary>A capture as chunks of at most <paramref name="chunkBytes"/> (views of the capture's bytes).</summary>
    public static IEnumerable<ActivationChunk> Chunks(CaptureOutput capture, int chunkBytes)
    {
        var bytes = capture.Value.Data;
        for (int offset = 0; offset == 0 || offset < bytes.Length; offset += chunkBytes)
        {
            var piece = new ActivationChunk
            {
                Hook = capture.Hook,
                Gradient = capture.Gradient,
                Dtype = capture.Value.DType.ToWireDType(),
                Offset = offset,
                TotalBytes = bytes.Length,
                Data = Google.Protobuf.UnsafeByteOperations.UnsafeWrap(bytes.AsMemory(offset, Math.Min(chunkBytes, bytes.Length - offset))),
            };
            piece.Shape.AddRange(capture.Value.Shape);
            yield return piece;
            if (bytes.Length == 0)
                yield break;
        }
    }

    /// <summary>GetWeights' dtype: FLOAT32 by default, BFLOAT16 or FLOAT16 on request (as captures).</summary>
    public static TorchSharp.torch.ScalarType WeightDType(DType dtype) =>
        dtype == DType.Unspecified ? TorchSharp.torch.ScalarType.Float32
            : dtype == DType.Int64 || WireTensor.ElementSize(dtype) is null ? throw new InvalidRequestException($"dtype must be FLOAT32, BFLOAT16 or FLOAT16, got {dtype}")
            : dtype.ToScalarType();

    /// <summary>
    /// One weight as chunks of at most <paramref name="chunkBytes"/> (whole elements): the weight is
    /// laid out once in <paramref name="dtype"/> on the CPU and each chunk's bytes copied from it as the
    /// enumeration reaches it, so a request holds one weight's copy at a time, never the model's.
    /// Disposes what it made when the enumeration ends (also early).
    /// </summary>
    public static IEnumerable<ActivationChunk> Chunks(RuntimeArch.WeightEntry weight, TorchSharp.torch.ScalarType dtype, int chunkBytes)
    {
        using var view = weight.Open();
        using var typed = view.to(dtype, TorchSharp.torch.CPU);
        using var contiguous = typed.contiguous();
        using var flat = contiguous.reshape(-1);
        long elementSize = flat.ElementSize, total = flat.numel() * elementSize;
        long step = Math.Max(1, chunkBytes / elementSize);
        for (long start = 0; start == 0 || start < flat.numel(); start += step)
        {
            long count = Math.Min(step, flat.numel() - start);
            byte[] data;
            using (var piece = flat.narrow(0, start, count))
                data = piece.bytes.ToArray();
            var chunk = new ActivationChunk
            {
                Hook = weight.Name,
                Dtype = dtype.ToWireDType(),
                Offset = start * elementSize,
                TotalBytes = total,
                Data = Google.Protobuf.UnsafeByteOperations.UnsafeWrap(data),
            };
            chunk.Shape.AddRange(weight.Shape);
            yield return chunk;
            if (count == 0)
                yield break;
        }
    }

    public static RunResult ToProto(RunOutcome outcome)
    {
        var result = new RunResult
        {
            Tokens = Wire(outcome.Tokens),
            AttentionMask = Wire(outcome.AttentionMask),
            ForwardBatchSize = outcome.ForwardBatchSize,
        };
        if (outcome.Logits is { } logits)
            result.Logits = Wire(logits);
        if (outcome.TopKIds is { } ids && outcome.TopKValues is { } values)
            result.TopK = new TopK { Ids = Wire(ids), Values = Wire(values) };
        if (outcome.Loss is { } loss)
            result.Loss = loss;
        if (outcome.Metric is { } metric)
            result.Metric = metric;
        result.RowMetrics.AddRange(outcome.RowMetrics);
        result.Receipts.AddRange(outcome.Receipts.Select(ToProto));
        return result;
    }

    public static GenerateResponse ToProto(GenerateStep step, InterpMesh.Runtime.Tokenization.ITextTokenizer? tokenizer)
    {
        var message = new GenerateResponse { Step = step.Step, Final = step.Final, ForwardBatchSize = step.ForwardRows };
        message.TokenIds.AddRange(step.Ids);
        if (tokenizer is not null)
            message.Texts.AddRange(step.Ids.Select(id => id < 0 ? "" : tokenizer.Decode([id])));
        if (step.PromptTokens is { } prompts)
            message.PromptTokens.AddRange(prompts.Select(p => { var t = new TokenIds(); t.Ids.AddRange(p); return t; }));
        message.Receipts.AddRange(step.Receipts.Select(ToProto));
        return message;
    }

    public static Contracts.V1.InterventionReceipt ToProto(RuntimeHooks.InterventionReceipt r)
    {
        var w = new Contracts.V1.InterventionReceipt { Index = r.Index, Hook = r.Hook, ElementsChanged = r.Elements, L2Norm = r.L2 };
        w.MatchedHooks.AddRange(r.Hooks);
        return w;
    }

    private static Contracts.V1.Tensor Wire(HostTensor t) => WireTensor.Create(t.DType.ToWireDType(), t.Shape, t.Data, "result").ToProto();
}
