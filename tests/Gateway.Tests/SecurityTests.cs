using System.Collections.Concurrent;
using System.Reflection;
using ServiceDescriptor = Google.Protobuf.Reflection.ServiceDescriptor;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Net.Client;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// A gateway with auth on whose every log line (at Debug) is captured, and a metrics endpoint.
/// No plugins: these tests are about the gateway's own surface.
/// </summary>
public sealed class SecureMeshFixture : IAsyncLifetime
{
    private WebApplication? service;
    private WebApplication? gateway;

    public CapturingLoggerProvider Logs { get; } = new();
    public int MetricsPort { get; } = Ports.Free();
    public string DataPath { get; } = Path.Combine(Path.GetTempPath(), "interpmesh-sec-" + Guid.NewGuid().ToString("N"));
    public GrpcChannel Channel { get; private set; } = null!;
    public IServiceProvider GatewayServices => gateway!.Services;

    public async Task InitializeAsync()
    {
        var plugins = Path.Combine(DataPath, "plugins");
        Directory.CreateDirectory(plugins);
        (service, var serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        (gateway, var address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, DataPath,
            settings: new() { ["Logging:LogLevel:Default"] = "Debug" },
            metricsPort: MetricsPort,
            configure: b => b.Logging.AddProvider(Logs));
        Channel = Mesh.Channel(address);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Mesh.StopAsync(gateway, service);
    }
}

/// <summary>Keeps every formatted log message (and exception text) in memory.</summary>
public sealed class CapturingLoggerProvider : ILoggerProvider
{
    private readonly ConcurrentQueue<string> lines = new();

    public IReadOnlyCollection<string> Lines => lines;

    public ILogger CreateLogger(string categoryName) => new Logger(categoryName, lines);

    public void Dispose()
    {
    }

    private sealed class Logger(string category, ConcurrentQueue<string> lines) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            // The structured values too: a secret could sit in a property that the message omits.
            var values = state is IEnumerable<KeyValuePair<string, object?>> pairs ? string.Join(" ", pairs.Select(p => $"{p.Key}={p.Value}")) : "";
            lines.Enqueue($"{logLevel} {category}: {formatter(state, exception)} {values} {exception}");
        }
    }
}

/// <summary>
/// Issue #12, security: every RPC the gateway serves needs a key (found by enumerating what it
/// serves, not by a hand-kept list), wrong keys are refused, and raw keys never reach the logs or
/// the metrics.
/// </summary>
[Collection("gateways")]
public sealed class SecurityTests(SecureMeshFixture mesh) : IClassFixture<SecureMeshFixture>
{
    /// <summary>Deliberately open: load balancers probe health, tools list services by reflection.</summary>
    private static readonly string[] OpenServices = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

    /// <summary>
    /// What the gateway serves: its gRPC services' methods, and for a service it forwards by prefix
    /// (ModelService), every method the contract defines plus one it does not (forwarded all the same).
    /// </summary>
    private IReadOnlyList<IMethod> ServedMethods()
    {
        var endpoints = mesh.GatewayServices.GetRequiredService<EndpointDataSource>().Endpoints;
        var forwarded = endpoints.Select(e => e.Metadata.GetMetadata<Routing.ModelServiceForwarding.ForwardedService>()?.Name).OfType<string>().ToHashSet(StringComparer.Ordinal);
        return [.. endpoints
            .Select(e => e.Metadata.GetMetadata<GrpcMethodMetadata>()?.Method)
            .OfType<IMethod>()
            .Concat(ContractServices().Where(s => forwarded.Contains(s.FullName)).SelectMany(s => s.Methods.Select(Method)
                .Append(new Method<byte[], byte[]>(MethodType.Unary, s.FullName, "NotYetAnRpc", Raw, Raw))))
            .DistinctBy(m => m.FullName)
            .OrderBy(m => m.FullName, StringComparer.Ordinal)];
    }

    private static Method<byte[], byte[]> Method(Google.Protobuf.Reflection.MethodDescriptor m) => new(
        (m.IsClientStreaming, m.IsServerStreaming) switch
        {
            (false, false) => MethodType.Unary,
            (false, true) => MethodType.ServerStreaming,
            (true, false) => MethodType.ClientStreaming,
            _ => MethodType.DuplexStreaming,
        }, m.Service.FullName, m.Name, Raw, Raw);

    /// <summary>Every service the contracts define, from the generated code.</summary>
    private static IReadOnlyList<ServiceDescriptor> ContractServices() => AuthorizationTests.ContractServices();

    [Fact]
    public void The_gateway_serves_every_contract_service_and_only_health_and_reflection_besides()
    {
        var served = ServedMethods().Select(m => m.ServiceName).Distinct().Order(StringComparer.Ordinal).ToList();
        var contracts = ContractServices().Select(s => s.FullName).ToList();
        Assert.Equal(["interpmesh.v1.AnalysisService", "interpmesh.v1.ArtifactService", "interpmesh.v1.ModelService"], contracts);
        Assert.Equal(contracts.Concat(OpenServices).Order(StringComparer.Ordinal), served);
        // Each contract method is served (none forgotten in a proxy): ModelService's by the forwarded prefix.
        var servedNames = ServedMethods().Select(m => m.FullName).ToHashSet(StringComparer.Ordinal);
        foreach (var method in ContractServices().SelectMany(s => s.Methods))
            Assert.Contains($"/{method.Service.FullName}/{method.Name}", servedNames);
    }

    /// <summary>Issue #20: what the gateway serves is what the role table covers; a method it forwards without a declared role has none.</summary>
    [Fact]
    public void Every_rpc_the_gateway_serves_needs_the_role_the_table_expects_and_an_undeclared_one_none()
    {
        var roles = mesh.GatewayServices.GetRequiredService<Security.RpcRoles>();
        var guarded = ServedMethods().Where(m => !OpenServices.Contains(m.ServiceName)).ToList();
        Assert.Equal(AuthorizationTests.Expected.Count + 1, guarded.Count);
        foreach (var method in guarded)
        {
            if (method.Name == "NotYetAnRpc")
                Assert.Null(roles.For(method.FullName));
            else
                Assert.Equal(AuthorizationTests.Expected[method.FullName], roles.For(method.FullName));
        }
    }

    public static TheoryData<string> KeyCases() => ["none", "wrong", "not-bearer", "empty-bearer"];

    [Theory]
    [MemberData(nameof(KeyCases))]
    public async Task Every_rpc_without_a_valid_key_is_unauthenticated_except_health_and_reflection(string keyCase)
    {
        var headers = keyCase switch
        {
            "none" => new Metadata(),
            "wrong" => new Metadata { { "authorization", "Bearer " + Mesh.AliceKey + "x" } },
            "not-bearer" => new Metadata { { "authorization", Mesh.AdminKey } },
            _ => new Metadata { { "authorization", "Bearer " } },
        };
        var invoker = mesh.Channel.CreateCallInvoker();
        var statuses = new Dictionary<string, StatusCode>(StringComparer.Ordinal);
        foreach (var served in ServedMethods())
            statuses[served.FullName] = await CallWithEmptyMessages(invoker, served, headers);

        var open = statuses.Where(s => OpenServices.Any(o => s.Key.StartsWith($"/{o}/", StringComparison.Ordinal))).ToList();
        var guarded = statuses.Except(open).ToList();
        Assert.True(guarded.Count >= 15, $"expected every contract method, found {guarded.Count}");
        var leaks = guarded.Where(s => s.Value != StatusCode.Unauthenticated).Select(s => $"{s.Key}: {s.Value}").ToList();
        Assert.True(leaks.Count == 0, "answered without a valid key: " + string.Join(", ", leaks));
        // The open ones really are open (not refused for a missing key).
        Assert.NotEmpty(open);
        Assert.All(open, s => Assert.NotEqual(StatusCode.Unauthenticated, s.Value));
    }

    private static readonly Marshaller<byte[]> Raw = Marshallers.Create(b => b, b => b);

    /// <summary>Calls any method with empty request message(s) and returns the status it ends with.</summary>
    private static async Task<StatusCode> CallWithEmptyMessages(CallInvoker invoker, IMethod served, Metadata headers)
    {
        var method = new Method<byte[], byte[]>(served.Type, served.ServiceName, served.Name, Raw, Raw);
        var options = new CallOptions(headers, deadline: DateTime.UtcNow.AddSeconds(20));
        try
        {
            switch (served.Type)
            {
                case MethodType.Unary:
                    await invoker.AsyncUnaryCall(method, null, options, []);
                    break;
                case MethodType.ServerStreaming:
                    {
                        using var call = invoker.AsyncServerStreamingCall(method, null, options, []);
                        // The first message (or the status) is the answer; Health.Watch never ends.
                        await call.ResponseStream.MoveNext(CancellationToken.None);
                        break;
                    }
                case MethodType.ClientStreaming:
                    {
                        using var call = invoker.AsyncClientStreamingCall(method, null, options);
                        await call.RequestStream.CompleteAsync();
                        await call.ResponseAsync;
                        break;
                    }
                default:
                    {
                        using var call = invoker.AsyncDuplexStreamingCall(method, null, options);
                        await call.RequestStream.WriteAsync([]);
                        await call.RequestStream.CompleteAsync();
                        // The first message (or the status) is the answer; Health.Watch never ends.
                        await call.ResponseStream.MoveNext(CancellationToken.None);
                        break;
                    }
            }
            return StatusCode.OK;
        }
        catch (RpcException e)
        {
            return e.StatusCode;
        }
    }

    [Fact]
    public async Task Raw_keys_never_appear_in_logs_or_metrics_but_key_names_label_the_metrics()
    {
        var models = new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel);
        var analyses = new AnalysisService.AnalysisServiceClient(mesh.Channel);
        var artifacts = new ArtifactService.ArtifactServiceClient(mesh.Channel);
        const string wrongKey = "wrong-key-that-must-not-be-logged-42";
        // Successful, refused, failing and not-found calls with every key, plus a wrong one.
        foreach (var key in new[] { Mesh.AdminKey, Mesh.AliceKey, Mesh.ReaderKey, wrongKey })
        {
            foreach (var call in new Func<Task>[]
            {
                () => models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(key)).ResponseAsync,
                () => models.TokenizeAsync(new TokenizeRequest { Texts = { "Once upon a time" } }, Mesh.As(key)).ResponseAsync,
                () => analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(key)).ResponseAsync,
                () => analyses.SubmitJobAsync(new AnalysisRequest { Plugin = "no-such-plugin" }, Mesh.As(key)).ResponseAsync,
                () => artifacts.DeleteArtifactAsync(new DeleteArtifactRequest { Name = "../escape" }, Mesh.As(key)).ResponseAsync,
                () => artifacts.ListArtifactsAsync(new ListArtifactsRequest(), Mesh.As(key)).ResponseAsync,
            })
            {
                try
                {
                    await call();
                }
                catch (RpcException)
                {
                }
            }
        }

        using var http = new HttpClient();
        var metrics = await http.GetStringAsync($"http://127.0.0.1:{mesh.MetricsPort}/metrics");
        var logs = string.Join("\n", mesh.Logs.Lines);
        Assert.NotEmpty(mesh.Logs.Lines);
        foreach (var secret in new[] { Mesh.AdminKey, Mesh.AliceKey, Mesh.ReaderKey, wrongKey })
        {
            Assert.DoesNotContain(secret, logs, StringComparison.Ordinal);
            Assert.DoesNotContain(secret, metrics, StringComparison.Ordinal);
        }
        // Key names, not keys, label the per-key metrics (so the check above looked at the right place).
        Assert.Contains("key=\"alice\"", metrics, StringComparison.Ordinal);
        Assert.Contains("key=\"reader\"", metrics, StringComparison.Ordinal);
    }
}
