using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// A key's rate limit is the deployment's, not each replica's: gateways on one job store count each
/// other and each enforces its share, so two replicas together allow one burst, and a replica that
/// stops gives its share back to the others.
/// </summary>
[Collection("gateways")]
public sealed class SharedRateLimitTests : IAsyncLifetime
{
    private const int Burst = 10;
    private readonly string data = TempFolders.Create("interpmesh-gw-rate-");
    private WebApplication? a, b;
    private string addressA = "", addressB = "";

    public async Task InitializeAsync()
    {
        // Practically no refill during the test (one token per 1000 s): only the burst counts.
        var settings = new Dictionary<string, string?> { ["Gateway:RateLimit:RequestsPerSecond"] = "0.001", ["Gateway:RateLimit:Burst"] = Burst.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        (a, addressA) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], "", data, settings, startWorker: false);
        (b, addressB) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], "", data, settings, startWorker: false);
    }

    public async Task DisposeAsync()
    {
        await Mesh.StopAsync(a, b);
        TempFolders.Delete(data);
    }

    private static async Task WaitForReplicas(WebApplication gateway, int count)
    {
        var share = gateway.Services.GetRequiredService<ReplicaShare>();
        for (var deadline = DateTime.UtcNow.AddSeconds(30); share.Replicas != count; await Task.Delay(100))
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"the gateway still counts {share.Replicas} replicas, not {count}");
        }
    }

    /// <summary>Calls alternately through the channels until every one refuses; returns how many calls went through.</summary>
    private static async Task<int> SpendAsync(string key, params Grpc.Net.Client.GrpcChannel[] channels)
    {
        int allowed = 0;
        var refused = new bool[channels.Length];
        for (int i = 0; !refused.All(r => r) && i < 10 * Burst; i++)
        {
            int c = i % channels.Length;
            if (refused[c])
                continue;
            try
            {
                await new AnalysisService.AnalysisServiceClient(channels[c]).ListPluginsAsync(new ListPluginsRequest(), Mesh.As(key));
                allowed++;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
            {
                Assert.Contains("over its rate limit", e.Status.Detail, StringComparison.Ordinal);
                refused[c] = true;
            }
        }
        return allowed;
    }

    [Fact]
    public async Task Two_replicas_together_allow_one_burst_and_a_stopped_one_gives_its_share_back()
    {
        await WaitForReplicas(a!, 2);
        await WaitForReplicas(b!, 2);
        // No retry policy: the refusals are under test.
        using var channelA = Mesh.Channel(addressA, InterpMesh.Client.ChannelRetry.None);
        using var channelB = Mesh.Channel(addressB, InterpMesh.Client.ChannelRetry.None);
        // Each replica allows half of the key's burst: together the configured burst, not twice it.
        Assert.Equal(Burst, await SpendAsync(Mesh.AliceKey, channelA, channelB));

        // B stops cleanly and withdraws; A counts itself alone at its next stamp and allows a key the whole burst.
        await Mesh.StopAsync(b);
        b = null;
        await WaitForReplicas(a!, 1);
        Assert.Equal(Burst, await SpendAsync(Mesh.ReaderKey, channelA));
    }
}
