using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.ModelService.Tests;

/// <summary>One request at a time; a request waits up to 5 s for the slot, in arrival order.</summary>
public sealed class WaitingAdmissionFixture : ServerFixture
{
    protected override Dictionary<string, string?> Overrides => new() { ["ModelService:MaxConcurrentRequests"] = "1", ["ModelService:AdmissionWaitMs"] = "5000" };
}

/// <summary>One request at a time, refused at once when busy.</summary>
public sealed class ImmediateAdmissionFixture : ServerFixture
{
    protected override Dictionary<string, string?> Overrides => new() { ["ModelService:MaxConcurrentRequests"] = "1", ["ModelService:AdmissionWaitMs"] = "0" };
}

internal static class Greedy
{
    /// <summary>A client that asks again the moment it is served (no pause, no back-off), until stopped.</summary>
    public static Task Run(Contracts.V1.ModelService.ModelServiceClient client, Action<StatusCode> refused, CancellationToken stop) => Task.Run(async () =>
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                using var call = client.Generate(new GenerateRequest { Prompts = { new Input { Text = "Once upon a time" } }, MaxNewTokens = 30, NoDefaultStop = true });
                await foreach (var _ in call.ResponseStream.ReadAllAsync())
                {
                }
            }
            catch (RpcException e)
            {
                refused(e.StatusCode);
            }
        }
    }, CancellationToken.None);
}

public sealed class WaitingAdmissionTests(WaitingAdmissionFixture server) : IClassFixture<WaitingAdmissionFixture>
{
    [Fact]
    public async Task Greedy_clients_cannot_keep_the_slot_from_a_request_that_asked_earlier()
    {
        using var stop = new CancellationTokenSource();
        int refusals = 0;
        var greedy = Enumerable.Range(0, 2).Select(_ => Greedy.Run(server.Client, _ => Interlocked.Increment(ref refusals), stop.Token)).ToArray();
        await Task.Delay(200);
        // Each polite request waits its turn (FIFO) and is served, though the greedy ones re-ask at once.
        for (int i = 0; i < 5; i++)
        {
            using var call = server.Client.Run(new RunRequest { Inputs = { new Input { Text = "Hello" } } });
            var messages = new List<RunResponse>();
            await foreach (var m in call.ResponseStream.ReadAllAsync())
                messages.Add(m);
            Assert.NotNull(messages[^1].Result);
        }
        await stop.CancelAsync();
        await Task.WhenAll(greedy);
        Assert.Equal(0, refusals);
    }
}

public sealed class ImmediateAdmissionTests(ImmediateAdmissionFixture server) : IClassFixture<ImmediateAdmissionFixture>
{
    [Fact]
    public async Task With_no_admission_wait_a_busy_server_refuses_at_once_with_retry_information()
    {
        using var stop = new CancellationTokenSource();
        var greedy = Greedy.Run(server.Client, _ => { }, stop.Token);
        await Task.Delay(200);
        RpcException? refused = null;
        for (int i = 0; i < 50 && refused is null; i++)
        {
            try
            {
                using var call = server.Client.Run(new RunRequest { Inputs = { new Input { Text = "Hello" } } });
                await foreach (var _ in call.ResponseStream.ReadAllAsync())
                {
                }
            }
            catch (RpcException e)
            {
                refused = e;
            }
        }
        await stop.CancelAsync();
        await greedy;
        Assert.NotNull(refused);
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("running its maximum of 1 requests", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal("200", refused.Trailers.GetValue(Contracts.RetryPushback.Trailer));
    }
}
