using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Routing;
using InterpMesh.Routing;
using InterpMesh.Gateway.Telemetry;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// The ModelService forwarder (issue #19): calls are forwarded by service prefix as unparsed
/// messages, bytes are counted from the body, failures become gRPC statuses without internals,
/// deadlines and cancellation reach the replica, and bad request bodies are refused saying why.
/// </summary>
[Collection("gateways")]
public sealed class ForwardingTests
{
    private static string TempDir() => TempFolders.Create("interpmesh-gw-fwd-");

    private static readonly Marshaller<byte[]> Raw = Marshallers.Create(b => b, b => b);

    /// <summary>
    /// A stand-in replica on real Kestrel (HTTP/2 on loopback) speaking the gRPC wire by hand: every
    /// <c>/interpmesh.v1.ModelService/*</c> call gets its request messages back reversed, a header and
    /// a trailer. It keeps the request headers it saw.
    /// </summary>
    private sealed class EchoReplica : IAsyncDisposable
    {
        private WebApplication app = null!;

        public ConcurrentQueue<IHeaderDictionary> Seen { get; } = new();
        public string Address { get; private set; } = "";

        public static async Task<EchoReplica> StartAsync()
        {
            var replica = new EchoReplica();
            var builder = WebApplication.CreateSlimBuilder();
            builder.WebHost.UseUrls("http://127.0.0.1:0");
            builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = HttpProtocols.Http2));
            replica.app = builder.Build();
            replica.app.MapPost("/interpmesh.v1.ModelService/{method}", async (HttpContext context) =>
            {
                replica.Seen.Enqueue(context.Request.Headers);
                using var body = new MemoryStream();
                await context.Request.Body.CopyToAsync(body);
                context.Response.ContentType = "application/grpc";
                context.Response.Headers["echo-header"] = "from-replica";
                var bytes = body.ToArray();
                for (int at = 0; at + 5 <= bytes.Length;)
                {
                    int length = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(at + 1));
                    var payload = bytes.AsSpan(at + 5, length).ToArray();
                    Array.Reverse(payload);
                    await context.Response.Body.WriteAsync(Framed(payload));
                    at += 5 + length;
                }
                context.Response.AppendTrailer("grpc-status", "0");
                context.Response.AppendTrailer("echo-trailer", (string?)context.Request.RouteValues["method"] ?? "");
            });
            await replica.app.StartAsync();
            replica.Address = replica.app.Urls.First();
            return replica;
        }

        public async ValueTask DisposeAsync()
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    private static byte[] Framed(byte[] payload, byte flag = 0)
    {
        var framed = new byte[5 + payload.Length];
        framed[0] = flag;
        BinaryPrimitives.WriteInt32BigEndian(framed.AsSpan(1), payload.Length);
        payload.CopyTo(framed, 5);
        return framed;
    }

    /// <summary>Counts the gateway's forwarded-bytes counter for one gateway host.</summary>
    private sealed class ByteCounter : IDisposable
    {
        private readonly MeterListener listener = new();
        private long total;

        public ByteCounter(WebApplication gateway)
        {
            var counter = gateway.Services.GetRequiredService<GatewayMetrics>().ActivationBytes;
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument, counter))
                    l.EnableMeasurementEvents(instrument);
            };
            listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref total, value));
            listener.Start();
        }

        public long Total => Interlocked.Read(ref total);

        public void Dispose() => listener.Dispose();
    }

    [Fact]
    public async Task A_method_the_gateway_has_no_code_for_is_forwarded_by_prefix_with_headers_and_trailers_but_not_the_key()
    {
        await using var replica = await EchoReplica.StartAsync();
        // Methods the gateway was not compiled with declare no role: configuration grants them one (#20).
        var (gateway, address) = await Mesh.StartGatewayAsync([replica.Address], TempDir(), TempDir(), new()
        {
            ["Gateway:Authorization:Roles:interpmesh.v1.ModelService/FutureRpc"] = "read",
            ["Gateway:Authorization:Roles:/interpmesh.v1.ModelService/FutureStream"] = "analyze",
        });
        try
        {
            using var counter = new ByteCounter(gateway);
            using var channel = Mesh.Channel(address);
            var invoker = channel.CreateCallInvoker();
            // Not in model_service.proto: only the prefix routes it.
            var future = new Method<byte[], byte[]>(MethodType.Unary, "interpmesh.v1.ModelService", "FutureRpc", Raw, Raw);
            Assert.DoesNotContain(Contracts.V1.ModelService.Descriptor.Methods, m => m.Name == future.Name);
            using var call = invoker.AsyncUnaryCall(future, null, Mesh.As(Mesh.ReaderKey), [1, 2, 3, 4]);
            Assert.Equal([4, 3, 2, 1], await call.ResponseAsync);
            Assert.Equal("from-replica", (await call.ResponseHeadersAsync).GetValue("echo-header"));
            Assert.Equal("FutureRpc", call.GetTrailers().GetValue("echo-trailer"));
            Assert.Equal(5 + 4, counter.Total);

            // A streamed call of several messages: each comes back, in order.
            var stream = new Method<byte[], byte[]>(MethodType.DuplexStreaming, "interpmesh.v1.ModelService", "FutureStream", Raw, Raw);
            using var duplex = invoker.AsyncDuplexStreamingCall(stream, null, Mesh.As(Mesh.AliceKey));
            var sent = Enumerable.Range(0, 20).Select(i => Enumerable.Range(0, 1000 * i).Select(b => (byte)(b + i)).ToArray()).ToList();
            foreach (var m in sent)
                await duplex.RequestStream.WriteAsync(m);
            await duplex.RequestStream.CompleteAsync();
            var received = new List<byte[]>();
            await foreach (var m in duplex.ResponseStream.ReadAllAsync())
                received.Add(m);
            Assert.Equal(sent.Select(m => m.Reverse().ToArray()), received);
            Assert.Equal(5 + 4 + sent.Sum(m => 5 + m.Length), counter.Total);

            // The replica saw the model's calls without the caller's key or the routing header.
            Assert.Equal(2, replica.Seen.Count);
            Assert.All(replica.Seen, h =>
            {
                Assert.False(h.ContainsKey("authorization"));
                Assert.Equal("application/grpc", h.ContentType);
            });
        }
        finally
        {
            await Mesh.StopAsync(gateway);
        }
    }

    [Fact]
    public async Task A_method_the_gateway_has_no_code_for_and_no_configured_role_is_refused_without_reaching_a_replica()
    {
        await using var replica = await EchoReplica.StartAsync();
        var (gateway, address) = await Mesh.StartGatewayAsync([replica.Address], TempDir(), TempDir(), new()
        {
            ["Gateway:Authorization:Roles:interpmesh.v1.ModelService/FutureStream"] = "analyze",
        });
        try
        {
            using var channel = Mesh.Channel(address);
            var invoker = channel.CreateCallInvoker();
            var future = new Method<byte[], byte[]>(MethodType.Unary, "interpmesh.v1.ModelService", "FutureRpc", Raw, Raw);
            foreach (var key in new[] { Mesh.AdminKey, Mesh.AliceKey, Mesh.ReaderKey })
            {
                var denied = await Assert.ThrowsAsync<RpcException>(() => invoker.AsyncUnaryCall(future, null, Mesh.As(key), [1, 2, 3, 4]).ResponseAsync);
                Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
                Assert.Equal("/interpmesh.v1.ModelService/FutureRpc declares no role, so this gateway refuses it; an administrator can grant one with "
                    + "Gateway:Authorization:Roles:interpmesh.v1.ModelService/FutureRpc=read|analyze|admin", denied.Status.Detail);
            }
            // A configured one needs the role configured: a read key may not, an analyze key may.
            var stream = new Method<byte[], byte[]>(MethodType.Unary, "interpmesh.v1.ModelService", "FutureStream", Raw, Raw);
            var weak = await Assert.ThrowsAsync<RpcException>(() => invoker.AsyncUnaryCall(stream, null, Mesh.As(Mesh.ReaderKey), [1, 2]).ResponseAsync);
            Assert.Equal(StatusCode.PermissionDenied, weak.StatusCode);
            Assert.Contains("lacks the 'analyze' role", weak.Status.Detail, StringComparison.Ordinal);
            Assert.Empty(replica.Seen);
            Assert.Equal([2, 1], await invoker.AsyncUnaryCall(stream, null, Mesh.As(Mesh.AliceKey), [1, 2]).ResponseAsync);
            Assert.Single(replica.Seen);
            // A declared method is forwarded as before (the echo answers an empty message with an empty one).
            Assert.Equal(new ModelInfo(), await new Contracts.V1.ModelService.ModelServiceClient(channel).GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey)));
            Assert.Equal(2, replica.Seen.Count);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
        }
    }

    [Fact]
    public async Task Bytes_counted_are_the_response_body_of_a_run_and_the_messages_equal_direct_calls()
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], TempDir(), TempDir());
        try
        {
            using var counter = new ByteCounter(gateway);
            using var channel = Mesh.Channel(address);
            var request = new RunRequest
            {
                Inputs = { new Input { Text = "Once upon a time there was" }, new Input { Text = "A cat" } },
                Captures = { new Capture { Hooks = { "blocks.*" } } },
            };
            var messages = new List<RunResponse>();
            using (var call = new Contracts.V1.ModelService.ModelServiceClient(channel).Run(request, Mesh.As(Mesh.AliceKey)))
            {
                await foreach (var m in call.ResponseStream.ReadAllAsync())
                    messages.Add(m);
            }
            Assert.True(messages.Count > 10);
            Assert.Equal(messages.Sum(m => 5L + m.CalculateSize()), counter.Total);
        }
        finally
        {
            await Mesh.StopAsync(gateway, service);
        }
    }

    [Fact]
    public async Task An_unreachable_replica_answers_unavailable_without_internals_and_the_gateway_keeps_serving()
    {
        int closed = Ports.Free();
        var (gateway, address) = await Mesh.StartGatewayAsync([$"http://127.0.0.1:{closed}"], TempDir(), TempDir());
        try
        {
            using var channel = Mesh.Channel(address);
            var models = new Contracts.V1.ModelService.ModelServiceClient(channel);
            var unary = await Assert.ThrowsAsync<RpcException>(() => models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey)).ResponseAsync);
            var streamed = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                using var call = models.Run(new RunRequest { Inputs = { new Input { Text = "x" } } }, Mesh.As(Mesh.AliceKey));
                await call.ResponseStream.MoveNext();
            });
            foreach (var e in new[] { unary, streamed })
            {
                Assert.Equal(StatusCode.Unavailable, e.StatusCode);
                Assert.Contains($"the model service for 'tiny' at http://127.0.0.1:{closed} is unavailable", e.Status.Detail, StringComparison.Ordinal);
                Assert.DoesNotContain("   at ", e.Status.Detail, StringComparison.Ordinal);
                Assert.DoesNotContain(RepoPaths.Root, e.Status.Detail, StringComparison.Ordinal);
                Assert.DoesNotContain(".cs:line", e.Status.Detail, StringComparison.Ordinal);
            }
            // The gateway's own services answer.
            var plugins = await new AnalysisService.AnalysisServiceClient(channel).ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
            Assert.NotNull(plugins);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
        }
    }

    private static GenerateRequest Long() => new() { Prompts = { new Input { Text = "Once" } }, MaxNewTokens = 500, NoDefaultStop = true, Captures = { new Capture { Hooks = { "blocks.*" } } } };

    private static async Task WaitIdle(ModelHost host)
    {
        for (int i = 0; i < 200 && host.Engine!.Admitted > 0; i++)
            await Task.Delay(50);
        Assert.Equal(0, host.Engine!.Admitted);
    }

    [Fact]
    public async Task A_client_cancelling_or_running_out_of_deadline_stops_the_replica_work()
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], TempDir(), TempDir());
        var host = service.Services.GetRequiredService<ModelHost>();
        try
        {
            using var channel = Mesh.Channel(address);
            var models = new Contracts.V1.ModelService.ModelServiceClient(channel);

            using (var cts = new CancellationTokenSource())
            {
                using var call = models.Generate(Long(), Mesh.As(Mesh.AliceKey, cts.Token));
                Assert.True(await call.ResponseStream.MoveNext());
                Assert.Equal(1, host.Engine!.Admitted);
                await cts.CancelAsync();
                var cancelled = await Assert.ThrowsAsync<RpcException>(async () =>
                {
                    while (await call.ResponseStream.MoveNext())
                    {
                    }
                });
                Assert.True(cancelled.StatusCode == StatusCode.Cancelled, $"expected CANCELLED, got {cancelled.Status}");
                await WaitIdle(host);
            }

            // The deadline is the gateway's to keep: a raw HTTP/2 client sends grpc-timeout but keeps no
            // timer of its own (a gRPC client's timer would end the call itself, and races the gateway's answer).
            var (http, status, message, _) = await PostAsync(address, "/interpmesh.v1.ModelService/Generate", Framed(Long().ToByteArray()), timeout: "800m");
            Assert.Equal(HttpStatusCode.OK, http);
            Assert.True(status == ((int)StatusCode.DeadlineExceeded).ToString(CultureInfo.InvariantCulture), $"expected DEADLINE_EXCEEDED (4), got {status}: {message}");
            await WaitIdle(host);
        }
        finally
        {
            await Mesh.StopAsync(gateway, service);
        }
    }

    [Fact]
    public async Task A_busy_replicas_refusal_reaches_the_client_with_its_trailers()
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"),
            new() { ["ModelService:MaxConcurrentRequests"] = "1", ["ModelService:AdmissionWaitMs"] = "0" });
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], TempDir(), TempDir());
        try
        {
            using var channel = Mesh.Channel(address, InterpMesh.Client.ChannelRetry.None);
            var models = new Contracts.V1.ModelService.ModelServiceClient(channel);
            using var cts = new CancellationTokenSource();
            using var hold = models.Generate(Long(), Mesh.As(Mesh.AliceKey, cts.Token));
            Assert.True(await hold.ResponseStream.MoveNext());
            var busy = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                using var call = models.Run(new RunRequest { Inputs = { new Input { Text = "x" } } }, Mesh.As(Mesh.AliceKey));
                await call.ResponseStream.MoveNext();
            });
            Assert.Equal(StatusCode.ResourceExhausted, busy.StatusCode);
            Assert.Equal("200", busy.Trailers.GetValue(Contracts.RetryPushback.Trailer));
            await cts.CancelAsync();
        }
        finally
        {
            await Mesh.StopAsync(gateway, service);
        }
    }

    [Fact]
    public async Task A_client_with_the_default_policy_waits_out_a_busy_replica_through_the_gateway()
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"),
            new() { ["ModelService:MaxConcurrentRequests"] = "1", ["ModelService:AdmissionWaitMs"] = "0" });
        string plugins = TempFolders.Create("interpmesh-gw-busy-"), data = TempFolders.Create("interpmesh-gw-busy-");
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], plugins, data);
        try
        {
            using var holder = Mesh.Channel(serviceAddress, InterpMesh.Client.ChannelRetry.None);
            using var cts = new CancellationTokenSource();
            using var hold = new Contracts.V1.ModelService.ModelServiceClient(holder).Generate(Long(), new CallOptions(cancellationToken: cts.Token));
            Assert.True(await hold.ResponseStream.MoveNext());
            // The slot frees 300 ms from now; the run is refused (pushback 200 ms) until then, and retried by the channel.
            using var channel = Mesh.Channel(address);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var run = Task.Run(async () =>
            {
                using var call = new Contracts.V1.ModelService.ModelServiceClient(channel).Run(new RunRequest { Inputs = { new Input { Text = "x" } } }, Mesh.As(Mesh.AliceKey));
                RunResult? result = null;
                await foreach (var m in call.ResponseStream.ReadAllAsync())
                    result = m.Result ?? result;
                return result;
            });
            await Task.Delay(300);
            await cts.CancelAsync();
            Assert.NotNull(await run);
            Assert.True(clock.Elapsed >= TimeSpan.FromMilliseconds(200), $"served after {clock.Elapsed.TotalMilliseconds:0} ms: the slot was never busy for it");
        }
        finally
        {
            await Mesh.StopAsync(gateway, service);
            TempFolders.Delete(plugins, data);
        }
    }

    /// <summary>What a raw HTTP/2 client gets: the HTTP status and the gRPC status and message (headers or trailers).</summary>
    private static async Task<(HttpStatusCode Http, string? Status, string? Message, string? Pushback)> PostAsync(string address, string path, byte[] body, string contentType = "application/grpc", string? timeout = null)
    {
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(HttpMethod.Post, address.TrimEnd('/') + path)
        {
            Content = new ByteArrayContent(body),
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        request.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        request.Headers.Add("authorization", $"Bearer {Mesh.AliceKey}");
        request.Headers.TryAddWithoutValidation("te", "trailers");
        if (timeout is not null)
            request.Headers.TryAddWithoutValidation("grpc-timeout", timeout);
        using var response = await http.SendAsync(request);
        await response.Content.ReadAsByteArrayAsync();
        string? Get(string name) =>
            response.Headers.TryGetValues(name, out var h) ? h.First() : response.TrailingHeaders.TryGetValues(name, out var t) ? t.First() : null;
        var message = Get("grpc-message");
        return (response.StatusCode, Get("grpc-status"), message is null ? null : Uri.UnescapeDataString(message), Get(Contracts.RetryPushback.Trailer));
    }

    public static TheoryData<string, byte[], string?, StatusCode, string> BadRequests() => new()
    {
        { "/interpmesh.v1.ModelService/GetModelInfo", Framed([], flag: 1), null, StatusCode.Unimplemented, "uncompressed messages only" },
        { "/interpmesh.v1.ModelService/GetModelInfo", Framed(new byte[10])[..8], null, StatusCode.Internal, "ended inside a message (8 bytes" },
        { "/interpmesh.v1.ModelService/GetModelInfo", [0, 0, 0], null, StatusCode.Internal, "ended inside a message (3 bytes" },
        { "/interpmesh.v1.ModelService/Tokenize", Framed(new byte[2048]), null, StatusCode.ResourceExhausted, "is 2048 bytes; this gateway takes at most 1024" },
        { "/interpmesh.v1.ModelService/Tokenize", [0, 0xFF, 0xFF, 0xFF, 0xFF], null, StatusCode.ResourceExhausted, "is 4294967295 bytes" },
        { "/interpmesh.v1.ModelService/GetModelInfo", Framed([]), "5x", StatusCode.InvalidArgument, "grpc-timeout '5x' is not a gRPC timeout" },
        { "/interpmesh.v1.ModelService/GetModelInfo", Framed([]), "123456789S", StatusCode.InvalidArgument, "is not a gRPC timeout" },
        { "/interpmesh.v1.ModelService/GetModelInfo", Framed([]), "-1S", StatusCode.InvalidArgument, "is not a gRPC timeout" },
        { "/interpmesh.v1.ModelService/1nvalid", Framed([]), null, StatusCode.Unimplemented, "is not a method of interpmesh.v1.ModelService" },
        { "/INTERPMESH.V1.MODELSERVICE/GetModelInfo", Framed([]), null, StatusCode.Unimplemented, "is not a method of interpmesh.v1.ModelService" },
        // The replica's own answer to a method nobody serves, passed on.
        { "/interpmesh.v1.ModelService/NoSuchRpc", Framed([]), null, StatusCode.Unimplemented, "" },
        // A request message the replica cannot parse: its answer (UNKNOWN, from grpc-aspnetcore), passed on.
        { "/interpmesh.v1.ModelService/Tokenize", Framed([0xFF, 0xFF, 0xFF]), null, StatusCode.Unknown, "" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Bad_request_bodies_and_headers_get_a_grpc_status_saying_why(string path, byte[] body, string? timeout, StatusCode expected, string message)
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        // NoSuchRpc is granted a role so that it reaches the replica, whose own answer is the case (#20: without one it is refused here).
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], TempDir(), TempDir(), new()
        {
            ["Gateway:MaxRequestBytes"] = "1024",
            ["Gateway:Authorization:Roles:interpmesh.v1.ModelService/NoSuchRpc"] = "read",
        });
        try
        {
            var (http, status, detail, pushback) = await PostAsync(address, path, body, timeout: timeout);
            Assert.Equal(HttpStatusCode.OK, http);
            Assert.Equal(((int)expected).ToString(System.Globalization.CultureInfo.InvariantCulture), status);
            // A message over Gateway:MaxRequestBytes is refused whenever it is sent: "do not retry"; no other refusal here asks for a retry.
            Assert.Equal(expected == StatusCode.ResourceExhausted ? "-1" : null, pushback);
            Assert.Contains(message, detail ?? "", StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", detail ?? "", StringComparison.Ordinal);
            // The gateway still forwards good calls afterwards.
            using var channel = Mesh.Channel(address);
            var info = await new Contracts.V1.ModelService.ModelServiceClient(channel).GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey));
            Assert.True(info.NLayers > 0);
        }
        finally
        {
            await Mesh.StopAsync(gateway, service);
        }
    }

    /// <summary>
    /// A method of one request message goes to the replica as a call carrying that message; a body of
    /// another count is passed through as it came, so the client gets the replica's own answer to it.
    /// </summary>
    [Fact]
    public async Task Single_message_methods_with_no_or_two_messages_get_the_replicas_own_answer()
    {
        var (service, serviceAddress) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        var (gateway, address) = await Mesh.StartGatewayAsync([serviceAddress], TempDir(), TempDir());
        try
        {
            var tokenize = new TokenizeRequest { Texts = { "Once upon a time" } }.ToByteArray();
            foreach (var (path, body) in new (string, byte[])[]
            {
                ("/interpmesh.v1.ModelService/GetModelInfo", []),
                ("/interpmesh.v1.ModelService/GetModelInfo", [.. Framed([]), .. Framed([])]),
                ("/interpmesh.v1.ModelService/Tokenize", [.. Framed(tokenize), .. Framed(tokenize)]),
                ("/interpmesh.v1.ModelService/Run", [.. Framed([]), .. Framed([])]),
            })
            {
                var direct = await PostAsync(serviceAddress, path, body);
                var forwarded = await PostAsync(address, path, body);
                Assert.NotEqual("0", direct.Status);
                Assert.Equal((direct.Http, direct.Status, direct.Message), (forwarded.Http, forwarded.Status, forwarded.Message));
            }
            // One message: answered as a direct call is.
            var once = await PostAsync(address, "/interpmesh.v1.ModelService/Tokenize", Framed(tokenize));
            Assert.Equal("0", once.Status);
        }
        finally
        {
            await Mesh.StopAsync(gateway, service);
        }
    }

    [Fact]
    public async Task A_request_that_is_not_grpc_is_refused_as_unsupported_media()
    {
        await using var replica = await EchoReplica.StartAsync();
        var (gateway, address) = await Mesh.StartGatewayAsync([replica.Address], TempDir(), TempDir());
        try
        {
            var (http, _, _, _) = await PostAsync(address, "/interpmesh.v1.ModelService/GetModelInfo", Framed([]), contentType: "application/json");
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, http);
            Assert.Empty(replica.Seen);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
        }
    }

    [Theory]
    [InlineData("1H", 3600_000)]
    [InlineData("2M", 120_000)]
    [InlineData("30S", 30_000)]
    [InlineData("250m", 250)]
    [InlineData("99999999u", 99_999.999)]
    [InlineData("5000000n", 5)]
    public void Grpc_timeouts_parse_as_the_spec_writes_them(string value, double milliseconds) =>
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), GrpcWire.ParseTimeout(value));

    [Theory]
    [InlineData("plain text", "plain text")]
    [InlineData("100%", "100%25")]
    [InlineData("é\n", "%C3%A9%0A")]
    public void Grpc_messages_are_percent_encoded(string message, string encoded) =>
        Assert.Equal(encoded, GrpcWire.EncodeMessage(message));

    [Theory]
    [InlineData("plain text")]
    [InlineData("100% é\n")]
    [InlineData("")]
    public void Grpc_messages_decode_to_what_was_encoded(string message) =>
        Assert.Equal(message, GrpcWire.DecodeMessage(GrpcWire.EncodeMessage(message)));

    [Theory]
    [InlineData(0.2)]
    [InlineData(250)]
    [InlineData(30_000)]
    [InlineData(400_000_000)]
    public void Grpc_timeouts_written_for_a_replica_parse_back_to_at_least_the_time_left(double milliseconds)
    {
        var left = TimeSpan.FromMilliseconds(milliseconds);
        var parsed = GrpcWire.ParseTimeout(GrpcWire.FormatTimeout(left))!.Value;
        Assert.InRange(parsed, left, left + TimeSpan.FromSeconds(Math.Max(0.001, milliseconds / 1e8 * 3600)));
    }

    [Fact]
    public async Task Forwarded_messages_round_trip_through_the_wire_format_unchanged()
    {
        var bytes = Enumerable.Range(0, 70_000).Select(i => (byte)i).ToArray();
        using var frame = Frame.Copy(new System.Buffers.ReadOnlySequence<byte>(bytes));
        Assert.Equal(bytes, frame.Span.ToArray());
        var encoded = new byte[GrpcWire.PrefixBytes + bytes.Length];
        Assert.Equal(GrpcWire.PrefixBytes + bytes.Length, GrpcWire.Encode(frame, encoded));
        var reader = System.IO.Pipelines.PipeReader.Create(new MemoryStream(encoded));
        using var read = await GrpcWire.ReadAsync(reader, 1 << 20, CancellationToken.None);
        Assert.NotNull(read);
        Assert.Equal(ByteString.CopyFrom(bytes), ByteString.CopyFrom(read.Span));
        Assert.Null(await GrpcWire.ReadAsync(reader, 1 << 20, CancellationToken.None));
    }
}
