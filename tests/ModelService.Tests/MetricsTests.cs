using System.Diagnostics;
using System.Net.Http;
using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.ModelService.Tests;

/// <summary>Prometheus metrics on the separate plain-HTTP port.</summary>
public sealed class MetricsTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    private async Task RunOnce(params string[] hooks)
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { 1, 403, 407, 261, 378 } } });
        if (hooks.Length > 0)
            request.Captures.Add(new Capture { Hooks = { hooks } });
        using var call = server.Client.Run(request);
        await foreach (var _ in call.ResponseStream.ReadAllAsync())
        {
        }
    }

    [Fact]
    public async Task Metrics_count_requests_by_method_and_status_and_bytes_streamed()
    {
        await RunOnce("blocks.*.hook_resid_post");
        await Assert.ThrowsAsync<RpcException>(() => RunOnce("blocks.0.nope"));
        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsUrl);
        Assert.Contains("interpmesh_requests_total{", text);
        Assert.Matches("interpmesh_requests_total\\{[^}]*method=\"Run\"[^}]*status=\"OK\"", text);
        Assert.Matches("interpmesh_requests_total\\{[^}]*method=\"Run\"[^}]*status=\"InvalidArgument\"", text);
        Assert.Contains("interpmesh_request_duration_seconds_bucket", text);
        Assert.Contains("interpmesh_activations_bytes_total", text);
        Assert.Contains("interpmesh_batch_size", text);
        Assert.Contains("interpmesh_queue_depth", text);
        Assert.Contains("interpmesh_tokens_total", text);
        Assert.DoesNotContain("403", text.Split('\n').Where(l => l.StartsWith("interpmesh", StringComparison.Ordinal)).Select(l => l.Split(' ')[0]).Aggregate("", string.Concat));
    }

    [Fact]
    public async Task The_grpc_port_does_not_serve_metrics_and_the_metrics_port_does_not_serve_grpc()
    {
        using var http = new HttpClient();
        var response = await http.GetAsync(server.Address + "/metrics");
        Assert.False(response.IsSuccessStatusCode && (await response.Content.ReadAsStringAsync()).Contains("interpmesh_", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_real_prometheus_server_scrapes_the_endpoint()
    {
        await RunOnce();
        string body = await PrometheusScrape.QueryAsync(server.MetricsPort, "interpmesh-modelservice", "interpmesh_requests_total{method=\"Run\",status=\"OK\"}");
        Assert.Contains("interpmesh-modelservice", body);
    }
}
