using System.Diagnostics;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Execution;

[CollectionDefinition(nameof(MemoryMeasurements), DisableParallelization = true)]
public sealed class MemoryMeasurements;

/// <summary>Many requests through the worker leave no tensors and no native memory behind.</summary>
/// <remarks>Runs alone: other tests allocating at the same time would move the resident-memory figure.</remarks>
[Collection(nameof(MemoryMeasurements))]
public sealed class WorkerMemoryTests(ShippedModels models) : IClassFixture<ShippedModels>
{
    private static long LiveTensors(TorchWorker worker) =>
        worker.Run(() => DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);

    private static float[] Request(Transformer m, int i)
    {
        // A realistic mix: captures to managed arrays, an intervention, last-position logits.
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.*.hook_resid_post", "blocks.1.attn.hook_pattern"], PositionSelection.Last)],
            [new Intervention("blocks.2.hook_resid_pre", InterventionOp.Add, full(m.Config.DModel, 0.1f * (i % 3)))]);
        var captured = new List<float[]>();
        int[] prompt = [1, 403 - (i % 50), 407, 261, 378, 300, 20, 5 + (i % 100)];
        var logits = m.Forward(Ids(prompt), null, plan, (_, t) => captured.Add(t.to(ScalarType.Float32).contiguous().data<float>().ToArray()), LogitsMode.Last)!;
        if (i % 10 == 0)
            TextGenerator.Generate(m, [prompt], new GenerationOptions(8, new SamplingOptions(0.8, Seed: i)), plan, (_, t) => t.Dispose());
        return logits.data<float>().ToArray();
    }

    /// <summary>
    /// The process's resident memory after a full collection: garbage of the managed heap (each
    /// request's captured arrays) and of other tests' objects in this process is gone, so what is
    /// left to grow is native memory the requests kept. Tensors freed only by a finalizer would
    /// show in the live-tensor count, which is asserted separately.
    /// </summary>
    private static long SettledResidentBytes()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        return Process.GetCurrentProcess().WorkingSet64;
    }

    private static Tensor Ids(int[] ids) => tensor(ids.Select(x => (long)x).ToArray(), [1, ids.Length]);

    [Fact]
    public async Task Live_tensor_count_and_resident_memory_stay_flat_over_many_requests()
    {
        using var worker = new TorchWorker();
        var m = models.StoriesHf.Transformer;
        for (int i = 0; i < 100; i++)
            await worker.RunAsync(() => Request(m, i));
        long tensorsBefore = LiveTensors(worker);
        for (int i = 0; i < 300; i++)
            await worker.RunAsync(() => Request(m, i));
        long rssMiddle = SettledResidentBytes();
        for (int i = 0; i < 300; i++)
            await worker.RunAsync(() => Request(m, i));
        long rssAfter = SettledResidentBytes();
        long tensorsAfter = LiveTensors(worker);

        Assert.Equal(tensorsBefore, tensorsAfter);
        // Each request allocates a few MB of native memory; a leak grows linearly with the number of
        // requests, so the second 300 would add as much as the first. Allocator noise stays well below.
        Assert.True(rssAfter - rssMiddle < 32L << 20, $"resident memory grew by {(rssAfter - rssMiddle) >> 20} MB over the last 300 requests");
    }

    [Fact]
    public async Task Worker_reports_failures_to_the_caller_and_keeps_serving()
    {
        using var worker = new TorchWorker();
        var m = models.StoriesHf.Transformer;
        var e = await Assert.ThrowsAsync<InvalidRequestException>(() => worker.RunAsync(() => m.Forward(Ids([1, 9999]), null, HookPlan.Empty, null, LogitsMode.Last)));
        Assert.Contains("outside the vocabulary", e.Message);
        var ok = await worker.RunAsync(() => Request(m, 1));
        Assert.Equal(512, ok.Length);
    }

    [Fact]
    public async Task Concurrent_callers_share_the_worker_and_get_their_own_results()
    {
        using var worker = new TorchWorker(workers: 2);
        var m = models.StoriesHf.Transformer;
        var expected = await worker.RunAsync(() => Request(m, 7));
        var results = await Task.WhenAll(Enumerable.Range(0, 24).Select(i => worker.RunAsync(() => Request(m, i % 2 == 0 ? 7 : 8))));
        for (int i = 0; i < results.Length; i += 2)
            Assert.Equal(expected, results[i]);
    }
}
