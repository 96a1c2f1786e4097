using System.Threading.Channels;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Telemetry;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;
using HookInfo = InterpMesh.Runtime.Hooks.HookInfo;
using PositionSelection = InterpMesh.Runtime.Hooks.PositionSelection;

namespace InterpMesh.ModelService.Grpc;

/// <summary>A request's resolved captures and the reduction each captured hook gets.</summary>
internal sealed record CaptureSpec(List<CaptureRequest> Requests, Dictionary<string, Reduction> Reductions);

/// <summary>Turns wire captures into runtime requests (with the byte budget) and streams captured tensors as chunks.</summary>
public sealed class CaptureStreaming(Microsoft.Extensions.Options.IOptions<ModelServiceOptions> options, ServiceMetrics metrics)
{
    private readonly ModelServiceOptions options = options.Value;

    /// <summary>Resolves a request's captures, checking them against the per-request byte budget.</summary>
    internal CaptureSpec Resolve(Transformer transformer, IEnumerable<Capture> wire, int batch, int length)
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
        if (budget > options.MaxCaptureBytes)
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"the requested captures need {budget:N0} bytes, over this server's per-request budget of {options.MaxCaptureBytes:N0}; capture fewer hooks, fewer positions (last or indices), a smaller batch, or bfloat16"));
        return new CaptureSpec(captures, reductions);
    }

    /// <summary>Streams one capture as chunks of at most MaxChunkBytes; blocks while the client is slow (back-pressure).</summary>
    internal void Write<T>(HookInfo hook, torch.Tensor value, Dictionary<string, Reduction> reductions, Func<ActivationChunk, T> wrap, ChannelWriter<T> writer, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (reductions.TryGetValue(hook.Name, out var r) && r == Reduction.Mean)
            value = value.to(ScalarType.Float32).mean([hook.Layout == HookLayout.AttentionMap ? 2L : 1L], keepdim: true).to(value.dtype);
        var bytes = TensorWire.Bytes(value);
        metrics.ActivationBytes.Add(bytes.Length);
        int chunk = options.MaxChunkBytes;
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
}
