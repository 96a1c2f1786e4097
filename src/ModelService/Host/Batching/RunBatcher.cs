using System.Diagnostics;
using System.Threading.Channels;
using Google.Protobuf;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Grpc;
using InterpMesh.ModelService.Hosting;
using InterpMesh.ModelService.Telemetry;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using HookInfo = InterpMesh.Runtime.Hooks.HookInfo;
using Tensor = TorchSharp.torch.Tensor;

namespace InterpMesh.ModelService.Batching;

/// <summary>
/// Dynamic batching of Run requests. Admitted requests queue here; a single loop takes the oldest,
/// waits up to <c>BatchWindowMs</c> for company, and runs it in one forward together with every
/// queued request of the same key (same captures, interventions, logits and loss options, padding
/// side and padded length) up to <c>BatchMaxRows</c> rows. Each client receives only its own rows,
/// exactly as a solo forward would shape them. Requests whose interventions carry per-row values
/// (a batch dimension) never share a forward.
/// </summary>
public sealed class RunBatcher : IDisposable
{
    private readonly ModelHost host;
    private readonly ServiceMetrics metrics;
    private readonly CaptureStreaming streaming;
    private readonly Channel<PendingRun> incoming = Channel.CreateUnbounded<PendingRun>(new UnboundedChannelOptions { SingleReader = true });
    private readonly List<PendingRun> waiting = [];
    private readonly Task loop;

    public RunBatcher(ModelHost host, ServiceMetrics metrics, CaptureStreaming streaming)
    {
        this.host = host;
        this.metrics = metrics;
        this.streaming = streaming;
        loop = Task.Run(LoopAsync);
    }

    internal void Submit(PendingRun run)
    {
        if (!incoming.Writer.TryWrite(run))
            run.Output.Writer.TryComplete(new InvalidOperationException("the server is shutting down"));
    }

    /// <summary>The merge key: requests with equal keys can share a forward without changing what either receives.</summary>
    internal static string Key(Transformer transformer, RunRequest request, List<IReadOnlyList<int>> rows)
    {
        foreach (var iv in request.Interventions)
        {
            // A value with a batch dimension belongs to this request's rows only.
            if (iv.Value is { } v && v.Shape.Count > 0 && v.Shape[0] != 1 && transformer.Hooks.Resolve([iv.Hook]).Any(h => v.Shape.Count == Rank(h)))
                return "solo:" + Guid.NewGuid().ToString("N");
        }
        var spec = new RunRequest { Logits = request.Logits, Loss = request.Loss, Padding = request.Padding };
        spec.Captures.AddRange(request.Captures);
        spec.Interventions.AddRange(request.Interventions);
        return $"{rows.Max(r => r.Count)}:{Convert.ToBase64String(System.Security.Cryptography.SHA256.HashData(spec.ToByteArray()))}";
    }

    private static int Rank(HookInfo hook) => hook.Layout == HookLayout.Positional ? 3 : 4;

    private async Task LoopAsync()
    {
        var options = host.Options;
        while (true)
        {
            if (waiting.Count == 0 && !await incoming.Reader.WaitToReadAsync().ConfigureAwait(false))
                break;
            Drain();
            if (options.BatchWindowMs > 0 && waiting.Sum(r => r.Rows.Count) < options.BatchMaxRows)
            {
                await Task.Delay(options.BatchWindowMs).ConfigureAwait(false);
                Drain();
            }
            var group = TakeGroup(options.BatchMaxRows);
            if (group.Count == 0)
                continue;
            try
            {
                await host.Worker.RunAsync(() =>
                {
                    Execute(group);
                    return 0;
                }).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                foreach (var run in group)
                    run.Output.Writer.TryComplete(e);
            }
        }
        foreach (var run in waiting)
            run.Output.Writer.TryComplete(new InvalidOperationException("the server is shutting down"));
    }

    private void Drain()
    {
        while (incoming.Reader.TryRead(out var run))
            waiting.Add(run);
    }

    /// <summary>The oldest live request and every later one with its key that fits, in arrival order.</summary>
    private List<PendingRun> TakeGroup(int maxRows)
    {
        var group = new List<PendingRun>();
        int rows = 0;
        for (int i = 0; i < waiting.Count; i++)
        {
            var run = waiting[i];
            if (run.Cancellation.IsCancellationRequested)
            {
                run.Output.Writer.TryComplete(new OperationCanceledException(run.Cancellation));
                waiting.RemoveAt(i--);
                continue;
            }
            if (group.Count > 0 && (run.Key != group[0].Key || rows + run.Rows.Count > maxRows))
                continue;
            group.Add(run);
            rows += run.Rows.Count;
            waiting.RemoveAt(i--);
        }
        return group;
    }

    /// <summary>Runs on the worker thread: one forward for the group, each member's captures and result sent to it alone.</summary>
    private void Execute(List<PendingRun> group)
    {
        var busy = Stopwatch.StartNew();
        // A solo forward is a child of its call; a shared one links to every call it serves.
        using var activity = group.Count == 1
            ? ServiceTracing.Source.StartActivity("interpmesh.forward", ActivityKind.Internal, group[0].Trace)
            : ServiceTracing.Source.StartActivity("interpmesh.forward", ActivityKind.Internal, default(ActivityContext),
                links: group.Where(r => r.Trace != default).Select(r => new ActivityLink(r.Trace)));
        var model = host.Model ?? throw new InvalidOperationException("the model is not loaded");
        var transformer = model.Transformer;
        var first = group[0];
        var rows = group.SelectMany(r => r.Rows).ToList();
        var (ids, mask) = TokenBatch.Pad(rows, first.Request.Padding == Contracts.V1.Padding.Right ? PaddingSide.Right : PaddingSide.Left, transformer.Device);
        metrics.BatchSize.Record(rows.Count);
        metrics.Tokens.Add(rows.Sum(r => r.Count));
        activity?.SetTag("interpmesh.requests", group.Count);
        activity?.SetTag("interpmesh.batch_size", rows.Count);
        activity?.SetTag("interpmesh.tokens", rows.Sum(r => r.Count));
        activity?.SetTag("interpmesh.captures", first.Captures.Reductions.Count);
        var starts = new int[group.Count];
        for (int i = 1; i < group.Count; i++)
            starts[i] = starts[i - 1] + group[i - 1].Rows.Count;

        var plan = HookPlan.Build(transformer.Hooks, first.Captures.Requests, WireRequests.Interventions(first.Request.Interventions));
        void Send(HookInfo hook, Tensor value)
        {
            for (int i = 0; i < group.Count; i++)
            {
                var run = group[i];
                if (run.Abandoned)
                    continue;
                try
                {
                    var own = group.Count == 1 ? value : value.narrow(0, starts[i], run.Rows.Count);
                    streaming.Write(hook, own, run.Captures.Reductions, chunk => new RunResponse { Activation = chunk }, run.Output.Writer, run.Cancellation);
                }
                catch (OperationCanceledException)
                {
                    Abandon(run);
                }
            }
            if (group.All(r => r.Abandoned))
                throw new OperationCanceledException("every client of this forward went away");
        }

        var logitsMode = first.Request.Logits?.Mode switch
        {
            LogitsRequest.Types.Mode.Last => LogitsMode.Last,
            LogitsRequest.Types.Mode.All => LogitsMode.All,
            _ => LogitsMode.None,
        };
        var logits = transformer.Forward(ids, mask, plan, Send, first.Request.Loss ? LogitsMode.All : logitsMode);
        for (int i = 0; i < group.Count; i++)
        {
            var run = group[i];
            if (run.Abandoned)
                continue;
            int n = run.Rows.Count;
            var result = Result(run.Request, logitsMode, ids.narrow(0, starts[i], n), mask.narrow(0, starts[i], n), logits?.narrow(0, starts[i], n));
            result.ForwardBatchSize = rows.Count;
            try
            {
                run.Output.Writer.WriteAsync(new RunResponse { Result = result }, run.Cancellation).AsTask().GetAwaiter().GetResult();
                run.Output.Writer.TryComplete();
            }
            catch (OperationCanceledException)
            {
                Abandon(run);
            }
        }
        metrics.WorkerBusy.Add(busy.Elapsed.TotalSeconds);
    }

    private static void Abandon(PendingRun run)
    {
        run.Abandoned = true;
        run.Output.Writer.TryComplete(new OperationCanceledException(run.Cancellation));
    }

    /// <summary>One request's logits, top-k and loss from its rows of the forward.</summary>
    private static RunResult Result(RunRequest request, LogitsMode logitsMode, Tensor ids, Tensor mask, Tensor? logits)
    {
        int batch = (int)ids.shape[0], length = (int)ids.shape[1];
        var result = new RunResult { Tokens = TensorWire.ToWire(ids), AttentionMask = TensorWire.ToWire(mask.to(ScalarType.Int64)) };
        if (logits is null)
            return result;
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
        return result;
    }

    public void Dispose()
    {
        incoming.Writer.TryComplete();
        loop.Wait(TimeSpan.FromSeconds(30));
    }
}
