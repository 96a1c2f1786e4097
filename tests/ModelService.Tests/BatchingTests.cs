using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;
using HookPlan = InterpMesh.Runtime.Hooks.HookPlan;

namespace InterpMesh.ModelService.Tests;

/// <summary>
/// A server whose batching window is long enough that concurrent test requests always meet, and that
/// a client's cancel reaches it before the window closes, also on a loaded 2-core CI machine (with
/// 400 ms, a second caller or a cancel arrived late in 10–28 % of lone runs of the leaving-client test).
/// </summary>
public sealed class BatchingServerFixture : ServerFixture
{
    protected override Dictionary<string, string?> Overrides => new()
    {
        ["ModelService:BatchWindowMs"] = "1000",
        ["ModelService:BatchMaxRows"] = "6",
    };
}

/// <summary>
/// Dynamic batching: concurrent compatible Runs share a forward, yet each client gets exactly what a
/// solo in-process forward of its own request gives (second computation path: the runtime directly).
/// </summary>
public sealed class BatchingTests(BatchingServerFixture server) : IClassFixture<BatchingServerFixture>
{
    // A merged forward multiplies larger matrices, so float32 sums run in another order: results agree
    // with a solo forward to rounding (observed ≤ 2e-5 on values of magnitude ~10), not bit for bit.
    private const float Tolerance = 1e-4f;

    private static readonly int[][] Rows =
    [
        [1, 403, 407, 261, 378], [1, 20, 300, 45, 9], [1, 7, 8, 9, 10], [1, 99, 98, 97, 96], [1, 5, 6, 200, 201],
    ];

    private static RunRequest Request(params int[][] rows)
    {
        var r = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last }, Loss = true };
        foreach (var row in rows)
            r.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { row } } });
        r.Captures.Add(new Capture { Hooks = { "blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern" } });
        return r;
    }

    internal sealed record Reply(Dictionary<string, float[]> Captures, RunResult Result);

    internal static async Task<Reply> Call(Contracts.V1.ModelService.ModelServiceClient client, RunRequest request, CancellationToken ct = default)
    {
        var parts = new Dictionary<string, MemoryStream>();
        RunResult? result = null;
        using var call = client.Run(request, cancellationToken: ct);
        await foreach (var m in call.ResponseStream.ReadAllAsync(ct))
        {
            if (m.Activation is { } a)
            {
                if (!parts.TryGetValue(a.Hook, out var p))
                    parts[a.Hook] = p = new MemoryStream();
                a.Data.WriteTo(p);
            }
            else
            {
                result = m.Result;
            }
        }
        return new Reply(parts.ToDictionary(kv => kv.Key, kv => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(kv.Value.ToArray()).ToArray()), result!);
    }

    /// <summary>The same request run alone, in process: captures, last-position logits and loss.</summary>
    private (Dictionary<string, float[]> Captures, float[] Logits, double Loss) Solo(int[][] rows)
    {
        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var m = server.Local.Transformer;
        var (ids, mask) = TokenBatch.Pad(rows.Select(r => (IReadOnlyList<int>)r).ToList(), PaddingSide.Left);
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern"])], null);
        var captures = new Dictionary<string, float[]>();
        var logits = m.Forward(ids, mask, plan, (h, t) => captures[h.Name] = t.contiguous().data<float>().ToArray(), LogitsMode.All)!;
        var logp = nn.functional.log_softmax(logits[.., ..^1], -1);
        var nll = -logp.gather(2, ids[.., 1..].unsqueeze(-1)).squeeze(-1);
        double loss = nll.mean().item<float>();
        return (captures, logits[.., ^1..].contiguous().data<float>().ToArray(), loss);
    }

    /// <summary>Equal within <see cref="Tolerance"/> (other test classes compare served captures with it too).</summary>
    internal static void Close(float[] expected, float[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        float worst = 0;
        for (int i = 0; i < expected.Length; i++)
            worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
        Assert.True(worst <= Tolerance, $"{what}: max |diff| {worst} > {Tolerance}");
    }

    [Fact]
    public async Task Concurrent_compatible_runs_share_one_forward_and_each_gets_its_own_rows()
    {
        int[][][] requests = [[Rows[0], Rows[1]], [Rows[2]], [Rows[3], Rows[4]]];
        var replies = await Task.WhenAll(requests.Select(rows => Call(server.Client, Request(rows))));
        for (int i = 0; i < requests.Length; i++)
        {
            var reply = replies[i];
            Assert.Equal(5, reply.Result.ForwardBatchSize);
            Assert.Equal(requests[i].Length, (int)reply.Result.Tokens.Shape[0]);
            var solo = Solo(requests[i]);
            Assert.Equal(solo.Captures.Keys.Order(), reply.Captures.Keys.Order());
            foreach (var (hook, values) in solo.Captures)
                Close(values, reply.Captures[hook], $"request {i} {hook}");
            Close(solo.Logits, reply.Result.Logits.Data.Span.ToArray().Chunk(4).Select(b => BitConverter.ToSingle(b)).ToArray(), $"request {i} logits");
            Assert.Equal(solo.Loss, reply.Result.Loss!.Value, 4);
        }
    }

    [Fact]
    public async Task Batches_never_exceed_the_row_limit()
    {
        // 4 requests of 2 rows with a limit of 6 rows: they cannot all share one forward.
        int[][][] requests = [[Rows[0], Rows[1]], [Rows[2], Rows[3]], [Rows[4], Rows[0]], [Rows[1], Rows[2]]];
        var replies = await Task.WhenAll(requests.Select(rows => Call(server.Client, Request(rows))));
        Assert.All(replies, r => Assert.InRange(r.Result.ForwardBatchSize, 2, 6));
        Assert.Contains(replies, r => r.Result.ForwardBatchSize > 2);
        for (int i = 0; i < requests.Length; i++)
            Close(Solo(requests[i]).Logits, replies[i].Result.Logits.Data.Span.ToArray().Chunk(4).Select(b => BitConverter.ToSingle(b)).ToArray(), $"request {i} logits");
    }

    [Fact]
    public async Task Runs_of_other_lengths_run_separately_and_runs_asking_for_other_things_get_only_their_own()
    {
        // Each request in a shared forward is its own hook segment (the engine): different captures
        // may share a forward; a different padded length may not.
        var other = Request(Rows[1]);
        other.Captures.Clear();
        other.Captures.Add(new Capture { Hooks = { "blocks.0.hook_resid_pre" } });
        var shorter = Request([1, 2, 3]);
        var replies = await Task.WhenAll(Call(server.Client, Request(Rows[0])), Call(server.Client, other), Call(server.Client, shorter));
        Assert.Equal(1, replies[2].Result.ForwardBatchSize);
        Assert.Equal(2, replies[0].Result.ForwardBatchSize);
        Assert.Equal(2, replies[1].Result.ForwardBatchSize);
        Assert.Equal(["blocks.0.hook_resid_pre"], replies[1].Captures.Keys);
        Assert.DoesNotContain("blocks.0.hook_resid_pre", replies[0].Captures.Keys);
        var solo = Solo([Rows[0]]);
        foreach (var (hook, values) in solo.Captures)
            Close(values, replies[0].Captures[hook], $"shared forward {hook}");
    }

    [Fact]
    public async Task Per_row_intervention_values_are_never_mixed_into_another_request()
    {
        var config = server.Local.Config;
        RunRequest Patched(int[] row, float value)
        {
            var r = Request(row);
            var data = Enumerable.Repeat(value, row.Length * config.DModel).ToArray();
            r.Interventions.Add(new Contracts.V1.Intervention
            {
                Hook = "blocks.0.hook_resid_post",
                Op = Contracts.V1.InterventionOp.Set,
                Value = new Contracts.V1.Tensor { Dtype = DType.Float32, Shape = { 1, row.Length, config.DModel }, Data = Google.Protobuf.ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan())) },
            });
            return r;
        }
        // Leading dimension 1 broadcasts over any batch, so these two could share; a [2, pos, d] value could not.
        var twoRows = Request(Rows[2], Rows[3]);
        twoRows.Interventions.Add(new Contracts.V1.Intervention
        {
            Hook = "blocks.0.hook_resid_post",
            Op = Contracts.V1.InterventionOp.Set,
            Value = new Contracts.V1.Tensor { Dtype = DType.Float32, Shape = { 2, 5, config.DModel }, Data = Google.Protobuf.ByteString.CopyFrom(new byte[2 * 5 * config.DModel * 4]) },
        });
        var sameTwoRows = twoRows.Clone();
        sameTwoRows.Inputs[0].Tokens.Ids[1] = 55;
        var replies = await Task.WhenAll(Call(server.Client, twoRows), Call(server.Client, sameTwoRows), Call(server.Client, Patched(Rows[0], 0.5f)), Call(server.Client, Patched(Rows[1], 0.5f)));
        // Requests are hook segments of the forward: per-row values apply to their own rows only, so
        // all four may share (within the 6-row limit).
        Assert.All(replies, r => Assert.InRange(r.Result.ForwardBatchSize, 1, 6));
        Assert.Contains(replies, r => r.Result.ForwardBatchSize > 2);
        // Everything after the patched layer saw 0.5 everywhere: both rows' layer-1 stream is equal.
        Close(replies[2].Captures["blocks.1.hook_resid_post"], replies[3].Captures["blocks.1.hook_resid_post"], "patched rows");
        // And the zero-patched requests saw zeros, not the 0.5 of the others: their second row (the same
        // tokens in both) is equal, and differs from the 0.5-patched rows.
        int row = 5 * config.DModel;
        Close(replies[0].Captures["blocks.1.hook_resid_post"][row..], replies[1].Captures["blocks.1.hook_resid_post"][row..], "zero-patched rows");
        Assert.NotEqual(replies[0].Captures["blocks.1.hook_resid_post"][row], replies[2].Captures["blocks.1.hook_resid_post"][0]);
    }

    [Fact]
    public async Task A_client_that_leaves_while_queued_does_not_disturb_the_others()
    {
        // The leaving client cancels once the server holds all three requests in its batching window
        // (waiting on the engine's admissions, not on the clock: on a loaded machine a fixed delay
        // could fire before its request was even sent, or the window close before the cancel arrived).
        using var leave = new CancellationTokenSource();
        var leaving = Call(server.Client, Request(Rows[4]), leave.Token);
        await Until(() => server.Engine.Admitted >= 1);
        var staying = new[] { Call(server.Client, Request(Rows[0])), Call(server.Client, Request(Rows[1])) };
        await Until(() => server.Engine.Admitted >= 3);
        await leave.CancelAsync();
        var error = await Assert.ThrowsAsync<RpcException>(() => leaving);
        Assert.Equal(StatusCode.Cancelled, error.StatusCode);
        var replies = await Task.WhenAll(staying);
        Assert.All(replies, r => Assert.Equal(2, r.Result.ForwardBatchSize));
        Close(Solo([Rows[0]]).Logits, replies[0].Result.Logits.Data.Span.ToArray().Chunk(4).Select(b => BitConverter.ToSingle(b)).ToArray(), "staying client logits");
    }

    private static async Task Until(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the server did not admit the requests within 10 s");
            await Task.Delay(2);
        }
    }
}
