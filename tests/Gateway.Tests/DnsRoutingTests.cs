using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Routing;
using InterpMesh.Routing;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// <c>dns:///host:port</c> model endpoints (a headless Service in Kubernetes): validated at start,
/// one replica whose transport resolves the name and balances over its addresses.
/// </summary>
[Collection("gateways")]
public sealed class DnsRoutingTests
{
    private static string TempDir() => TempFolders.Create("interpmesh-gw-dns-");

    private static GatewayOptions WithEndpoints(params string[] endpoints)
    {
        var o = new GatewayOptions { Auth = new AuthOptions { Enabled = false } };
        o.Models["tiny"] = new ModelRoute { Endpoints = [.. endpoints] };
        return o;
    }

    [Theory]
    [InlineData("dns:///model-stories260k.interpmesh.svc.cluster.local:50051")]
    [InlineData("dns:///localhost:1")]
    [InlineData("DNS:///10.0.0.7:65535")]
    [InlineData("dns:///[::1]:50051")]
    [InlineData("http://model-stories260k-0.model-stories260k:50051")]
    [InlineData("https://models.example.com")]
    public void Validation_accepts_http_urls_and_dns_host_port(string endpoint)
    {
        var result = new GatewayOptionsValidator().Validate(null, WithEndpoints(endpoint));
        Assert.True(result.Succeeded, result.FailureMessage);
    }

    [Theory]
    [InlineData("dns:///model-stories260k.interpmesh.svc.cluster.local", "no port")]
    [InlineData("dns:///model-stories260k:", "port '' is not a number")]
    [InlineData("dns:///model-stories260k:grpc", "port 'grpc' is not a number")]
    [InlineData("dns:///model-stories260k:70000", "port '70000' is not a number from 1 to 65535")]
    [InlineData("dns:///:50051", "no host")]
    [InlineData("dns:///", "no host")]
    [InlineData("dns://8.8.8.8/model-stories260k:50051", "names no DNS server")]
    [InlineData("dns:model-stories260k:50051", "names no DNS server")]
    [InlineData("dns:///model-stories260k:50051/path", "is not host:port")]
    [InlineData("dns:///::1:50051", "IPv6 host goes in brackets")]
    [InlineData("dns:///[::1]", "no port")]
    [InlineData("dns:///bad_host!:50051", "is not a host name")]
    [InlineData("grpc://model-stories260k:50051", "not an http(s) URL (http://host:port) nor dns:///host:port")]
    [InlineData("model-stories260k:50051", "not an http(s) URL")]
    public void Validation_refuses_malformed_endpoints_saying_why(string endpoint, string message)
    {
        var result = new GatewayOptionsValidator().Validate(null, WithEndpoints("http://127.0.0.1:50051", endpoint));
        Assert.True(result.Failed);
        var error = Assert.Single(result.Failures!);
        Assert.StartsWith($"Gateway:Models:tiny:Endpoints has '{endpoint}': ", error, StringComparison.Ordinal);
        Assert.Contains(message, error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_dns_endpoint_is_one_balanced_replica_that_proxies_model_calls()
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        var port = new Uri(serviceAddress).Port;
        string endpoint = $"dns:///localhost:{port}";
        WebApplication? gateway = null;
        try
        {
            (gateway, var address) = await Mesh.StartGatewayAsync([endpoint], TempDir(), TempDir());
            var pool = gateway.Services.GetRequiredService<ModelRouter>().Resolve("tiny");
            var replica = Assert.Single(pool.Replicas);
            Assert.Equal(endpoint, replica.Address);
            Assert.True(replica.Balanced);
            Assert.Equal(2, pool.Attempts);

            using var channel = Mesh.Channel(address);
            var viaGateway = new Contracts.V1.ModelService.ModelServiceClient(channel);
            using var directChannel = Mesh.Channel(serviceAddress);
            var direct = new Contracts.V1.ModelService.ModelServiceClient(directChannel);

            var info = await viaGateway.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey));
            Assert.Equal(await direct.GetModelInfoAsync(new GetModelInfoRequest()), info);
            Assert.True(info.NLayers > 0);

            var request = new RunRequest
            {
                Inputs = { new Input { Text = "Once upon a time" } },
                Captures = { new Capture { Hooks = { "blocks.0.hook_resid_post" } } },
            };
            var gatewayRun = await Collect(viaGateway.Run(request, Mesh.As(Mesh.AliceKey)));
            var directRun = await Collect(direct.Run(request));
            Assert.NotEmpty(gatewayRun);
            Assert.Contains(gatewayRun, m => m.Activation is not null);
            Assert.Equal(directRun.Select(m => m.ToByteArray()), gatewayRun.Select(m => m.ToByteArray()));

            // The forwarder resolved the name, and the calls above went to its addresses.
            Assert.NotEmpty(replica.Transport.Resolved);
            Assert.All(replica.Transport.Resolved, u => Assert.True(System.Net.IPAddress.IsLoopback(System.Net.IPAddress.Parse(u.Host.Trim('[', ']'))), u.ToString()));
        }
        finally
        {
            if (gateway is not null)
            {
                await gateway.StopAsync();
                await gateway.DisposeAsync();
            }
            await service.StopAsync();
            await service.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_dns_transport_takes_its_addresses_in_turn_and_skips_one_that_failed()
    {
        int lookups = 0;
        using var transport = new ReplicaTransport("dns:///model-gpt2.interpmesh.svc.cluster.local:50051", (host, _) =>
        {
            Assert.Equal("model-gpt2.interpmesh.svc.cluster.local", host);
            lookups++;
            return Task.FromResult(new[] { System.Net.IPAddress.Parse("10.0.0.7"), System.Net.IPAddress.Parse("10.0.0.8"), System.Net.IPAddress.Parse("fd00::9") });
        });
        var turn = new List<string>();
        for (int i = 0; i < 6; i++)
            turn.Add((await transport.NextAsync(CancellationToken.None)).ToString());
        Assert.Equal(1, lookups);
        string[] all = ["http://10.0.0.7:50051/", "http://10.0.0.8:50051/", "http://[fd00::9]:50051/"];
        Assert.Equal(all, transport.Resolved.Select(u => u.ToString()));
        // Round robin: each address once in every three calls.
        Assert.Equal(all.Order(StringComparer.Ordinal), turn.Take(3).Order(StringComparer.Ordinal));
        Assert.Equal(turn.Take(3), turn.Skip(3));

        transport.Failed(new Uri(all[1]));
        for (int i = 0; i < 6; i++)
            Assert.NotEqual(all[1], (await transport.NextAsync(CancellationToken.None)).ToString());
        // A failure also makes the next call look the name up again (the pod may have gone).
        Assert.Equal(2, lookups);
    }

    [Fact]
    public async Task A_dns_endpoint_whose_name_does_not_resolve_answers_unavailable_saying_so()
    {
        const string Endpoint = "dns:///no-such-model-service.invalid:50051";
        var (gateway, address) = await Mesh.StartGatewayAsync([Endpoint], TempDir(), TempDir());
        try
        {
            using var channel = Mesh.Channel(address, InterpMesh.Client.ChannelRetry.None);
            var models = new Contracts.V1.ModelService.ModelServiceClient(channel);
            var e = await Assert.ThrowsAsync<RpcException>(() => models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey)).ResponseAsync);
            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
            Assert.Contains($"the model service for 'tiny' at {Endpoint} is unavailable", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("'no-such-model-service.invalid' does not resolve", e.Status.Detail, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", e.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
        }
    }

    private static async Task<List<T>> Collect<T>(AsyncServerStreamingCall<T> call)
    {
        using (call)
        {
            var all = new List<T>();
            await foreach (var m in call.ResponseStream.ReadAllAsync())
                all.Add(m);
            return all;
        }
    }
}
