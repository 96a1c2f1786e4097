using System.Collections.Concurrent;
using System.Diagnostics;
using Grpc.Core;
using InterpMesh.Client;
using InterpMesh.Contracts;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Retries as gRPC defines them (issue #19): a channel from <see cref="Channels.ForAddress"/> retries
/// a refusal transparently after the server's <c>grpc-retry-pushback-ms</c>, never a refusal marked
/// "do not retry", never a call whose response has started; the gateway's forwarder passes a
/// refusal on once (the client's policy retries it, not the gateway as well). Attempts are counted
/// on a stand-in model service (real Kestrel, HTTP/2 on loopback) that answers from a script.
/// </summary>
[Collection("gateways")]
public sealed class RetryTests
{
    private static readonly TimeSpan Pushback = TimeSpan.FromMilliseconds(300);

    /// <summary>What the stand-in does with one attempt.</summary>
    private enum Step
    {
        /// <summary>Answers (unary: a ModelInfo; Run: one message).</summary>
        Ok,

        /// <summary>RESOURCE_EXHAUSTED with a pushback of <see cref="Pushback"/>.</summary>
        Busy,

        /// <summary>RESOURCE_EXHAUSTED with a pushback of -1 (do not retry).</summary>
        Never,

        /// <summary>RESOURCE_EXHAUSTED with no pushback.</summary>
        Bare,

        /// <summary>UNAVAILABLE before any response.</summary>
        Unavailable,

        /// <summary>Run: one message, then UNAVAILABLE.</summary>
        MessageThenUnavailable,

        /// <summary>Response headers, then RESOURCE_EXHAUSTED with a pushback of 0.</summary>
        HeadersThenBusy,
    }

    /// <summary>The stand-in's service: each call takes the next step of the script (the last one repeats) and is counted.</summary>
    private sealed class ScriptedModelService(Step[] script) : Contracts.V1.ModelService.ModelServiceBase
    {
        private int attempts;

        public int Attempts => Volatile.Read(ref attempts);

        public ConcurrentQueue<long> Times { get; } = new();

        private Step Next()
        {
            Times.Enqueue(Stopwatch.GetTimestamp());
            int n = Interlocked.Increment(ref attempts);
            return script[Math.Min(n, script.Length) - 1];
        }

        private static RpcException Refusal(Step step) => step switch
        {
            Step.Busy => new RpcException(new Status(StatusCode.ResourceExhausted, "busy"), RetryPushback.After(Pushback)),
            Step.Never => new RpcException(new Status(StatusCode.ResourceExhausted, "over a limit"), RetryPushback.Never()),
            Step.Bare => new RpcException(new Status(StatusCode.ResourceExhausted, "no pushback")),
            Step.HeadersThenBusy => new RpcException(new Status(StatusCode.ResourceExhausted, "busy after headers"), RetryPushback.After(TimeSpan.Zero)),
            _ => new RpcException(new Status(StatusCode.Unavailable, "going away")),
        };

        public override async Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context)
        {
            var step = Next();
            if (step == Step.HeadersThenBusy)
                await context.WriteResponseHeadersAsync([]);
            return step == Step.Ok ? new ModelInfo { NLayers = 7 } : throw Refusal(step);
        }

        public override async Task Run(RunRequest request, IServerStreamWriter<RunResponse> responseStream, ServerCallContext context)
        {
            var step = Next();
            if (step == Step.HeadersThenBusy)
                await context.WriteResponseHeadersAsync([]);
            if (step is Step.Ok or Step.MessageThenUnavailable)
                await responseStream.WriteAsync(new RunResponse { Result = new RunResult() });
            if (step is not Step.Ok)
                throw Refusal(step);
        }
    }

    /// <summary>A stand-in model service on real Kestrel answering from <paramref name="script"/>.</summary>
    private sealed class StandIn : IAsyncDisposable
    {
        private readonly WebApplication app;

        private StandIn(WebApplication app, ScriptedModelService service)
        {
            this.app = app;
            Service = service;
            Address = app.Urls.First();
        }

        public ScriptedModelService Service { get; }
        public string Address { get; }

        public static async Task<StandIn> StartAsync(params Step[] script)
        {
            var service = new ScriptedModelService(script);
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = HttpProtocols.Http2));
            builder.Logging.ClearProviders();
            builder.Services.AddGrpc();
            builder.Services.AddSingleton(service);
            var app = builder.Build();
            app.MapGrpcService<ScriptedModelService>();
            await app.StartAsync();
            return new StandIn(app, service);
        }

        public async ValueTask DisposeAsync()
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    private static async Task<int> RunToEnd(Contracts.V1.ModelService.ModelServiceClient client, CallOptions options = default)
    {
        using var call = client.Run(new RunRequest(), options);
        int messages = 0;
        await foreach (var _ in call.ResponseStream.ReadAllAsync())
            messages++;
        return messages;
    }

    [Fact]
    public async Task A_busy_then_free_unary_call_is_retried_transparently_after_the_pushback()
    {
        await using var standIn = await StandIn.StartAsync(Step.Busy, Step.Busy, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        var clock = Stopwatch.StartNew();
        var info = await new Contracts.V1.ModelService.ModelServiceClient(channel).GetModelInfoAsync(new GetModelInfoRequest());
        clock.Stop();
        Assert.Equal(7, info.NLayers);
        Assert.Equal(3, standIn.Service.Attempts);
        // Each retry came no sooner than the pushback asked (two of them), measured on the server too;
        // 5 ms for the timers' granularity (a CI run measured 599.x ms for two 300 ms pushbacks).
        Assert.True(clock.Elapsed >= 2 * Pushback - TimeSpan.FromMilliseconds(5), $"retried after {clock.Elapsed.TotalMilliseconds:0} ms in all, pushback {Pushback.TotalMilliseconds} ms twice");
        var times = standIn.Service.Times.ToArray();
        for (int i = 1; i < times.Length; i++)
        {
            var gap = Stopwatch.GetElapsedTime(times[i - 1], times[i]);
            Assert.True(gap >= Pushback - TimeSpan.FromMilliseconds(5), $"attempt {i + 1} came {gap.TotalMilliseconds:0} ms after the one before; the pushback was {Pushback.TotalMilliseconds} ms");
        }
    }

    [Fact]
    public async Task A_busy_then_free_stream_is_retried_transparently_after_the_pushback()
    {
        await using var standIn = await StandIn.StartAsync(Step.Busy, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        var clock = Stopwatch.StartNew();
        Assert.Equal(1, await RunToEnd(new Contracts.V1.ModelService.ModelServiceClient(channel)));
        // 5 ms for the timers' granularity, as above (a CI run measured 299.x ms for a 300 ms pushback).
        Assert.True(clock.Elapsed >= Pushback - TimeSpan.FromMilliseconds(5), $"retried after {clock.Elapsed.TotalMilliseconds:0.0} ms, pushback {Pushback.TotalMilliseconds} ms");
        Assert.Equal(2, standIn.Service.Attempts);
    }

    [Fact]
    public async Task A_refusal_marked_do_not_retry_is_sent_once_and_reaches_the_caller()
    {
        await using var standIn = await StandIn.StartAsync(Step.Never, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
        var unary = await Assert.ThrowsAsync<RpcException>(() => client.GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
        Assert.Equal(StatusCode.ResourceExhausted, unary.StatusCode);
        Assert.Equal("-1", unary.Trailers.GetValue(RetryPushback.Trailer));
        Assert.Equal(1, standIn.Service.Attempts);
    }

    [Fact]
    public async Task A_stream_refused_with_do_not_retry_is_sent_once()
    {
        await using var standIn = await StandIn.StartAsync(Step.Never, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        var e = await Assert.ThrowsAsync<RpcException>(() => RunToEnd(new Contracts.V1.ModelService.ModelServiceClient(channel)));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(1, standIn.Service.Attempts);
    }

    [Fact]
    public async Task A_stream_whose_response_has_started_is_not_retried()
    {
        await using var standIn = await StandIn.StartAsync(Step.MessageThenUnavailable, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        using var call = new Contracts.V1.ModelService.ModelServiceClient(channel).Run(new RunRequest());
        Assert.True(await call.ResponseStream.MoveNext());
        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal(1, standIn.Service.Attempts);
    }

    [Fact]
    public async Task A_call_whose_response_headers_have_arrived_is_not_retried_even_with_a_pushback()
    {
        await using var standIn = await StandIn.StartAsync(Step.HeadersThenBusy, Step.HeadersThenBusy, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
        var unary = await Assert.ThrowsAsync<RpcException>(() => client.GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
        Assert.Equal(StatusCode.ResourceExhausted, unary.StatusCode);
        var stream = await Assert.ThrowsAsync<RpcException>(() => RunToEnd(client));
        Assert.Equal(StatusCode.ResourceExhausted, stream.StatusCode);
        Assert.Equal(2, standIn.Service.Attempts);
    }

    [Fact]
    public async Task Unavailable_before_any_response_is_retried_by_the_default_policy()
    {
        await using var standIn = await StandIn.StartAsync(Step.Unavailable, Step.Unavailable, Step.Ok);
        using var channel = Channels.ForAddress(standIn.Address);
        Assert.Equal(1, await RunToEnd(new Contracts.V1.ModelService.ModelServiceClient(channel)));
        Assert.Equal(3, standIn.Service.Attempts);
    }

    [Fact]
    public async Task The_default_policy_gives_up_after_five_attempts()
    {
        await using var standIn = await StandIn.StartAsync(Step.Bare);
        using var channel = Channels.ForAddress(standIn.Address, new ChannelRetry { InitialBackoff = TimeSpan.FromMilliseconds(10), MaxBackoff = TimeSpan.FromMilliseconds(20) });
        var e = await Assert.ThrowsAsync<RpcException>(() => new Contracts.V1.ModelService.ModelServiceClient(channel).GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Equal(5, standIn.Service.Attempts);
    }

    [Fact]
    public async Task Retries_are_configurable_per_channel()
    {
        await using (var standIn = await StandIn.StartAsync(Step.Busy, Step.Ok))
        {
            using var none = Channels.ForAddress(standIn.Address, ChannelRetry.None);
            var e = await Assert.ThrowsAsync<RpcException>(() => new Contracts.V1.ModelService.ModelServiceClient(none).GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Equal("300", e.Trailers.GetValue(RetryPushback.Trailer));
            Assert.Equal(1, standIn.Service.Attempts);
        }
        await using (var standIn = await StandIn.StartAsync(Step.Bare, Step.Ok))
        {
            using var unavailableOnly = Channels.ForAddress(standIn.Address, new ChannelRetry { RetryResourceExhausted = false });
            var e = await Assert.ThrowsAsync<RpcException>(() => new Contracts.V1.ModelService.ModelServiceClient(unavailableOnly).GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Equal(1, standIn.Service.Attempts);
        }
        await using (var standIn = await StandIn.StartAsync(Step.Busy, Step.Ok))
        {
            // grpc-dotnet follows a server's non-negative pushback whatever the status once the channel
            // has a policy (documented on ChannelRetry.RetryResourceExhausted): only None stops it.
            using var unavailableOnly = Channels.ForAddress(standIn.Address, new ChannelRetry { RetryResourceExhausted = false });
            Assert.Equal(7, (await new Contracts.V1.ModelService.ModelServiceClient(unavailableOnly).GetModelInfoAsync(new GetModelInfoRequest())).NLayers);
            Assert.Equal(2, standIn.Service.Attempts);
        }
        await using (var standIn = await StandIn.StartAsync(Step.Unavailable, Step.Ok))
        {
            using var busyOnly = Channels.ForAddress(standIn.Address, new ChannelRetry { RetryUnavailable = false });
            var e = await Assert.ThrowsAsync<RpcException>(() => new Contracts.V1.ModelService.ModelServiceClient(busyOnly).GetModelInfoAsync(new GetModelInfoRequest()).ResponseAsync);
            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
            Assert.Equal(1, standIn.Service.Attempts);
        }
    }

    [Fact]
    public async Task The_client_library_waits_out_a_busy_server_by_default_and_surfaces_it_when_told_not_to_retry()
    {
        await using (var standIn = await StandIn.StartAsync(Step.Busy, Step.Ok))
        {
            using var client = MeshClient.Connect(standIn.Address);
            Assert.Equal(7, (await client.GetModelInfoAsync()).NLayers);
            Assert.Equal(2, standIn.Service.Attempts);
        }
        await using (var standIn = await StandIn.StartAsync(Step.Busy, Step.Ok))
        {
            using var client = MeshClient.Connect(standIn.Address, retry: ChannelRetry.None);
            var e = await Assert.ThrowsAsync<RpcException>(() => client.GetModelInfoAsync());
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Equal(1, standIn.Service.Attempts);
        }
    }

    [Fact]
    public async Task Through_the_gateway_a_refusal_reaches_the_client_once_with_its_pushback_and_the_clients_policy_retries_it()
    {
        await using var standIn = await StandIn.StartAsync(Step.Busy, Step.Busy, Step.Ok);
        string plugins = TempFolders.Create("interpmesh-gw-retry-"), data = TempFolders.Create("interpmesh-gw-retry-");
        var (gateway, address) = await Mesh.StartGatewayAsync([standIn.Address], plugins, data);
        try
        {
            // Without a policy the client sees the replica's refusal: the gateway did not retry it.
            using (var none = Mesh.Channel(address, ChannelRetry.None))
            {
                var e = await Assert.ThrowsAsync<RpcException>(() => RunToEnd(new Contracts.V1.ModelService.ModelServiceClient(none), Mesh.As(Mesh.AliceKey)));
                Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
                Assert.Equal("300", e.Trailers.GetValue(RetryPushback.Trailer));
                Assert.Equal(1, standIn.Service.Attempts);
            }
            // With the default policy the client retries after the pushback; each retry reaches the replica once.
            using var channel = Mesh.Channel(address);
            var clock = Stopwatch.StartNew();
            Assert.Equal(1, await RunToEnd(new Contracts.V1.ModelService.ModelServiceClient(channel), Mesh.As(Mesh.AliceKey)));
            Assert.True(clock.Elapsed >= Pushback, $"retried after {clock.Elapsed.TotalMilliseconds:0} ms, pushback {Pushback.TotalMilliseconds} ms");
            Assert.Equal(3, standIn.Service.Attempts);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
            TempFolders.Delete(plugins, data);
        }
    }

    [Fact]
    public async Task Through_the_gateway_a_do_not_retry_refusal_and_a_started_stream_reach_the_replica_once()
    {
        await using var standIn = await StandIn.StartAsync(Step.Never, Step.MessageThenUnavailable, Step.Ok);
        string plugins = TempFolders.Create("interpmesh-gw-retry-"), data = TempFolders.Create("interpmesh-gw-retry-");
        var (gateway, address) = await Mesh.StartGatewayAsync([standIn.Address], plugins, data);
        try
        {
            using var channel = Mesh.Channel(address);
            var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
            var never = await Assert.ThrowsAsync<RpcException>(() => RunToEnd(client, Mesh.As(Mesh.AliceKey)));
            Assert.Equal(StatusCode.ResourceExhausted, never.StatusCode);
            Assert.Equal("-1", never.Trailers.GetValue(RetryPushback.Trailer));
            Assert.Equal(1, standIn.Service.Attempts);
            using var call = client.Run(new RunRequest(), Mesh.As(Mesh.AliceKey));
            Assert.True(await call.ResponseStream.MoveNext());
            var broken = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
            Assert.Equal(StatusCode.Unavailable, broken.StatusCode);
            Assert.Equal(2, standIn.Service.Attempts);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
            TempFolders.Delete(plugins, data);
        }
    }
}
