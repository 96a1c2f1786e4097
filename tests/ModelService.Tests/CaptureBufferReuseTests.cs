using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine.Outputs;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;
using HookPlan = InterpMesh.Runtime.Hooks.HookPlan;

namespace InterpMesh.ModelService.Tests;

/// <summary>The capture buffer pool on its own: exact lengths, its bound, and one return per buffer.</summary>
public sealed class HostBufferPoolTests
{
    private const int Big = HostBufferPool.MinPooledBytes * 2;

    [Fact]
    public void A_returned_buffer_serves_the_next_rent_of_its_length_only()
    {
        using var pool = new HostBufferPool(1 << 20);
        var first = pool.Rent(Big);
        pool.Return(first);
        Assert.Equal(Big, pool.HeldBytes);
        Assert.NotSame(first, pool.Rent(Big + 1));
        Assert.Equal(0, pool.Reused);
        Assert.Same(first, pool.Rent(Big));
        Assert.Equal(1, pool.Reused);
        Assert.Equal(0, pool.HeldBytes);
        Assert.NotSame(first, pool.Rent(Big));
    }

    [Fact]
    public void The_pool_keeps_at_most_its_capacity_and_nothing_small_or_with_zero_capacity()
    {
        using var pool = new HostBufferPool(3L * Big);
        var buffers = Enumerable.Range(0, 5).Select(_ => pool.Rent(Big)).ToList();
        buffers.ForEach(pool.Return);
        Assert.Equal(3L * Big, pool.HeldBytes);
        pool.Return(new byte[HostBufferPool.MinPooledBytes - 1]);
        Assert.Equal(3L * Big, pool.HeldBytes);
        pool.Clear();
        Assert.Equal(0, pool.HeldBytes);

        using var none = new HostBufferPool(0);
        var b = none.Rent(Big);
        none.Return(b);
        Assert.Equal(0, none.HeldBytes);
        Assert.NotSame(b, none.Rent(Big));
        Assert.Throws<ArgumentOutOfRangeException>(() => new HostBufferPool(-1));
    }

    [Fact]
    public void A_released_capture_gives_its_buffer_back_once_and_its_bytes_are_gone()
    {
        using var pool = new HostBufferPool(1 << 20);
        using var t = arange(Big / 4, dtype: ScalarType.Float32);
        var host = HostTensor.From(t, pool);
        Assert.Equal(7f, BitConverter.ToSingle(host.Data, 7 * 4));
        var capture = new CaptureOutput("blocks.0.hook_resid_post", 0, host);
        capture.Release();
        capture.Release();
        Assert.Equal(Big, pool.HeldBytes);
        Assert.Equal(Big, capture.Bytes);
        Assert.Throws<ObjectDisposedException>(() => host.Data);
        // Released twice, returned once: two rents cannot get the same array.
        Assert.NotSame(pool.Rent(Big), pool.Rent(Big));

        // A tensor made without a pool is never pooled.
        var plain = HostTensor.From(t);
        plain.Release();
        Assert.Equal(0, pool.HeldBytes);
    }
}

/// <summary>
/// Captures over gRPC come from reused buffers once the first Run has sent its own, and every Run still
/// gets its own values: each reply equals an in-process forward (second computation path), also when
/// Runs of other inputs go on at the same time.
/// </summary>
public sealed class CaptureBufferReuseTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    // Concurrent Runs may share a forward (float32 sums in another order): compared as the batching tests compare (≤ 1e-4).
    private const string Hook = "blocks.*.attn.hook_pattern";

    // 8 heads × 48² positions × 4 bytes = 73,728 bytes a row: above the pool's smallest size.
    private static int[] Row(int seed) => Enumerable.Range(0, 48).Select(i => i == 0 ? 1 : 2 + (i * 37 + seed * 101) % 500).ToArray();

    private static RunRequest Request(int[] row)
    {
        var r = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        r.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { row } } });
        r.Captures.Add(new Capture { Hooks = { Hook } });
        return r;
    }

    private async Task<Dictionary<string, float[]>> Remote(int[] row) => (await BatchingTests.Call(server.Client, Request(row))).Captures;

    private Dictionary<string, float[]> Local(int[] row)
    {
        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var m = server.Local.Transformer;
        var (ids, mask) = TokenBatch.Pad([row], PaddingSide.Left);
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest([Hook])], null);
        var captures = new Dictionary<string, float[]>();
        m.Forward(ids, mask, plan, (h, t) => captures[h.Name] = t.contiguous().data<float>().ToArray(), LogitsMode.None);
        return captures;
    }

    private static void Same(Dictionary<string, float[]> expected, Dictionary<string, float[]> actual, string what)
    {
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (hook, e) in expected)
            BatchingTests.Close(e, actual[hook], $"{what} {hook}");
    }

    [Fact]
    public async Task Runs_after_the_first_reuse_its_buffers_and_each_gets_its_own_values()
    {
        var pool = server.Engine.CapturePool;
        pool.Clear();
        int layers = server.Local.Config.NLayers, heads = server.Local.Config.NHeads;
        int each = heads * 48 * 48 * 4;
        Assert.True(each >= HostBufferPool.MinPooledBytes, "each capture must be large enough to be pooled");

        long reusedBefore = pool.Reused;
        Same(Local(Row(0)), await Remote(Row(0)), "first run");
        // Every capture was sent, so every buffer is back (a later layer may already have taken an earlier one's).
        Assert.InRange(pool.HeldBytes, each, (long)layers * each);
        Assert.Equal(0, pool.HeldBytes % each);

        long reusedAfterFirst = pool.Reused;
        Same(Local(Row(1)), await Remote(Row(1)), "second run (reused buffers)");
        Assert.True(pool.Reused - reusedAfterFirst >= 1, "the second run took no buffer from the pool");
        Assert.InRange(pool.HeldBytes, each, (long)layers * each);

        // Runs of other inputs at once: buffers go from one to the next while others are being sent.
        var rows = Enumerable.Range(2, 6).Select(Row).ToArray();
        var replies = await Task.WhenAll(rows.Select(Remote));
        for (int i = 0; i < rows.Length; i++)
            Same(Local(rows[i]), replies[i], $"concurrent run {i}");
        Assert.InRange(pool.HeldBytes, each, pool.Capacity);
        Assert.True(pool.Reused > reusedBefore);
    }
}
