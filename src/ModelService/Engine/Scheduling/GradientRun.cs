using System.Diagnostics;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace InterpMesh.Engine.Scheduling;

/// <summary>
/// A Run with a gradient request, alone in its forward: the forward runs under autograd (inference
/// mode off, grad on — only here; the torch thread stays in inference mode otherwise). At each
/// requested hook, after that hook's interventions, the activation x continues as x + z with z a
/// zero leaf that requires grad, so after the backward pass grad(z) = d metric / d x without
/// cutting the graph; the weights never require grad. The metric is computed per row from the
/// logits, summed, and differentiated; each gradient is then selected (positions, dtype) exactly as
/// a capture is and streamed flagged as a gradient, before the result carrying the metric.
/// The graph is freed by the backward pass and the request's dispose scope. Torch thread only.
/// </summary>
internal static class GradientRun
{
    public static void Execute(Transformer transformer, RunWork work, IEngineObserver observer, CaptureSink sink)
    {
        var started = Stopwatch.GetTimestamp();
        using var activity = Scheduler.Tracing.StartActivity("interpmesh.gradient", ActivityKind.Internal, work.Trace);
        var run = work.Run;
        var gradient = run.Gradient!;
        int batch = run.Rows.Length;
        activity?.SetTag("interpmesh.batch_size", batch);
        var leaves = new List<(HookInfo Hook, Tensor Z)>();
        try
        {
            using var scope = NewDisposeScope();
            Tensor ids, mask, logits, lastReal, perRow;
            using (inference_mode(false))
            using (enable_grad())
            {
                (ids, mask) = TokenBatch.Pad(run.Rows.Select(r => (IReadOnlyList<int>)r).ToList(), run.Padding, transformer.Device);
                GradientProbe probe = (hook, x) =>
                {
                    var z = zeros_like(x).requires_grad_(true);
                    // The leaf outlives the stage's dispose scope: its grad is read after the backward pass.
                    z.DetachFromDisposeScope();
                    leaves.Add((hook, z));
                    return Scalars.Add(x, z);
                };
                var segment = new HookSegment(0, batch, work.Plan, sink, work.Receipts, probe);
                logits = transformer.Forward(ids, mask, [segment], LogitsMode.All, null, work.Cancellation)!;
                int length = (int)ids.shape[1];
                lastReal = (mask.to(ScalarType.Int64) * Scalars.Arange(length, ScalarType.Int64, mask.device)).amax([1]);
                perRow = Metric(gradient, logits, ids, mask, lastReal);
                work.Cancellation.ThrowIfCancellationRequested();
                var total = perRow.sum();
                // No requested hook reaches the metric (only ln1's hooks on the split-input path): every gradient is zero.
                if (total.requires_grad)
                    total.backward();
            }
            observer.Forward(batch, run.Rows.Sum(r => r.Length), Stopwatch.GetElapsedTime(started).TotalSeconds);
            foreach (var (hook, z) in leaves)
            {
                if (work.Gone)
                    break;
                // A hook the metric does not depend on (e.g. ln1's hooks on the split-input path) has no grad: zero.
                var g = z.grad ?? zeros_like(z);
                var selected = gradient.Positions.Apply(hook, g.detach(), gradient.DType, lastReal);
                work.Buffer.Write(new CaptureOutput(hook.Name, 0, HostTensor.From(selected), gradient: true));
            }
            if (!work.Gone)
            {
                var rowValues = perRow.detach().to(ScalarType.Float64).cpu().data<double>().ToArray();
                var values = logits.detach();
                Tensor? userLogits = run.Loss || run.Logits == LogitsMode.All ? values
                    : run.Logits == LogitsMode.Last ? values.gather(1, lastReal.view(-1, 1, 1).expand(batch, 1, values.shape[2]))
                    : null;
                work.Receipts.EndStep();
                work.Buffer.Write(Scheduler.Outcome(work, ids, mask, userLogits, batch, rowValues.Sum(), rowValues));
            }
            work.Finish();
        }
        finally
        {
            foreach (var (_, z) in leaves)
                z.Dispose();
        }
    }

    /// <summary>The metric of each row, <c>[batch]</c>, differentiable with respect to the forward.</summary>
    private static Tensor Metric(ValidatedGradient g, Tensor logits, Tensor ids, Tensor mask, Tensor lastReal)
    {
        long batch = logits.shape[0], length = logits.shape[1], vocab = logits.shape[2];
        var device = logits.device;
        switch (g.Metric)
        {
            case GradientMetric.Loss:
                {
                    // As RunResult.loss, per row: targets where both the position and the next are real tokens.
                    var targets = ids[.., 1..];
                    var valid = mask[.., 1..].logical_and(mask[.., ..^1]).to(logits.dtype);
                    var losses = F.cross_entropy(logits[.., ..^1].reshape(-1, vocab), targets.reshape(-1), reduction: nn.Reduction.None)
                        .view(batch, length - 1);
                    return (losses * valid).sum([1]) / valid.sum([1]);
                }
            case GradientMetric.Logit:
            case GradientMetric.LogProb:
                {
                    var at = AtPositions(logits, g.Position is int p ? tensor(Enumerable.Repeat((long)p, (int)batch).ToArray(), device: device) : lastReal);
                    if (g.Metric == GradientMetric.LogProb)
                        at = at.log_softmax(-1);
                    var tokens = tensor(g.Tokens.Select(t => (long)t).ToArray(), device: device).view(batch, 1);
                    return at.gather(1, tokens).squeeze(1);
                }
            case GradientMetric.LogitDifference:
                {
                    var at = AtPositions(logits, lastReal);
                    var rows = new Tensor[batch];
                    for (int r = 0; r < batch; r++)
                    {
                        var row = at[r];
                        var correct = row.index_select(0, tensor(g.Correct[r].Select(t => (long)t).ToArray(), device: device)).mean();
                        var incorrect = row.index_select(0, tensor(g.Incorrect[r].Select(t => (long)t).ToArray(), device: device)).mean();
                        rows[r] = correct - incorrect;
                    }
                    return stack(rows);
                }
            default:
                throw new InvalidOperationException($"unknown gradient metric {g.Metric}");
        }
    }

    /// <summary>Each row's logits at its position: <c>[batch, vocab]</c>.</summary>
    private static Tensor AtPositions(Tensor logits, Tensor positions) =>
        logits.gather(1, positions.view(-1, 1, 1).expand(logits.shape[0], 1, logits.shape[2])).squeeze(1);
}
