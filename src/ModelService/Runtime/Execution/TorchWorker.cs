using System.Threading.Channels;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>
/// Runs torch work on dedicated threads. TorchSharp's dispose scopes and inference mode are
/// thread-local, so work never runs on thread-pool threads that <c>await</c>. Each item runs inside
/// its own dispose scope and inference mode: every tensor it creates is freed when it returns,
/// unless the item detaches it on purpose. A bounded queue gives back-pressure.
/// </summary>
public sealed class TorchWorker : IDisposable
{
    private readonly Channel<Action> queue;
    private readonly Thread[] threads;

    public TorchWorker(int workers = 1, int queueCapacity = 64, string name = "torch-worker")
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(workers, 1);
        TorchRuntime.Initialize();
        queue = Channel.CreateBounded<Action>(new BoundedChannelOptions(queueCapacity) { SingleReader = workers == 1 });
        threads = new Thread[workers];
        for (int i = 0; i < workers; i++)
        {
            threads[i] = new Thread(Loop) { IsBackground = true, Name = $"{name}-{i}" };
            threads[i].Start();
        }
    }

    /// <summary>Runs <paramref name="work"/> on a worker thread in a fresh dispose scope and inference mode.</summary>
    /// <remarks>The result must not be a tensor of the scope (copy it to managed memory, or detach it).</remarks>
    public async Task<T> RunAsync<T>(Func<T> work, CancellationToken cancellationToken = default)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        await queue.Writer.WriteAsync(() =>
        {
            if (cancellationToken.IsCancellationRequested)
            {
                done.TrySetCanceled(cancellationToken);
                return;
            }
            try
            {
                using var mode = inference_mode();
                using var scope = NewDisposeScope();
                done.TrySetResult(work());
            }
            catch (Exception e)
            {
                done.TrySetException(e);
            }
        }, cancellationToken);
        return await done.Task;
    }

    /// <summary>Synchronous convenience for command-line use.</summary>
    public T Run<T>(Func<T> work) => RunAsync(work).GetAwaiter().GetResult();

    private void Loop()
    {
        var reader = queue.Reader;
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (reader.TryRead(out var item))
                item();
        }
    }

    public void Dispose()
    {
        queue.Writer.TryComplete();
        foreach (var t in threads)
            t.Join();
    }
}
