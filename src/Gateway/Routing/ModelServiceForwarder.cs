using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Routing;
using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Routing;

/// <summary>
/// The ModelService API at the gateway, forwarded by service prefix: every call to
/// <c>/interpmesh.v1.ModelService/*</c> is authenticated and authorized (<see cref="AuthInterceptor.Authorize"/>:
/// the role its proto declares or configuration grants; none is PERMISSION_DENIED),
/// routed by its <c>interpmesh-model</c> metadata to a replica, and its length-prefixed messages
/// are copied both ways without being parsed — an RPC added to the model service needs no code here,
/// only its role (declared in its proto, or granted by configuration to one newer than this gateway).
/// <para>
/// Messages are passed whole (a request message through a pooled buffer; a response message written
/// straight into the client's response once the channel has all of it), so a replica failing mid-stream still
/// ends the client's call at a message boundary with a proper UNAVAILABLE status. A call that fails
/// UNAVAILABLE before any response message is retried once on another replica (or, for a
/// <c>dns:///</c> endpoint, on the channel's next address): nothing has reached the client yet.
/// That is the gateway's only retry: the replica channel (<see cref="Replica.Channel"/>) has no gRPC
/// retry policy, so a refusal (RESOURCE_EXHAUSTED with its <c>grpc-retry-pushback-ms</c>) goes to
/// the client once and the client's own policy decides.
/// The client's deadline (or <see cref="GatewayOptions.CallTimeoutSeconds"/>) and cancellation
/// carry over to the replica. Request metadata is not forwarded (the API key stays here); response
/// headers and trailers from the replica are.
/// </para>
/// </summary>
public sealed class ModelServiceForwarder(ModelRouter router, AuthInterceptor auth, IOptions<GatewayOptions> options, GatewayMetrics metrics, ILogger<ModelServiceForwarder> logger)
{
    public const string Service = "interpmesh.v1.ModelService";

    /// <summary>Distinct method names kept (each is a method object the channels cache); beyond them, unknown names are refused here.</summary>
    private const int MaxMethods = 256;

    /// <summary>Response headers and trailers the forwarder writes itself (or HTTP owns), not copied from the replica.</summary>
    private static readonly HashSet<string> Reserved = new(StringComparer.OrdinalIgnoreCase)
    {
        "grpc-status", "grpc-message", "grpc-status-details-bin", "content-type", "content-length", "grpc-encoding", "grpc-accept-encoding", "te", "date", "server",
    };

    private readonly ConcurrentDictionary<string, Method<Frame, Frame>> methods = new(
        Contracts.V1.ModelService.Descriptor.Methods.ToDictionary(m => m.Name, m => Duplex(m.Name), StringComparer.Ordinal), StringComparer.Ordinal);

    /// <summary>
    /// The methods this gateway knows to take one request message (unary and server-streaming ones), as
    /// server-streaming calls: the request goes with the call's headers in one write, where a duplex call
    /// hands it over through the request stream (a round of task switches a small call notices).
    /// </summary>
    private static readonly Dictionary<string, Method<Frame, Frame>> SingleRequest =
        Contracts.V1.ModelService.Descriptor.Methods.Where(m => !m.IsClientStreaming)
            .ToDictionary(m => m.Name, m => new Method<Frame, Frame>(MethodType.ServerStreaming, Service, m.Name, Frame.Marshaller, Frame.Marshaller), StringComparer.Ordinal);

    /// <summary>
    /// The methods this gateway knows to answer with one message (unary ones): that message is not
    /// flushed on its own but leaves with the trailers when the call ends, so Kestrel can send both
    /// in one write (a unary call's latency notices each write).
    /// </summary>
    private static readonly HashSet<string> SingleResponse =
        Contracts.V1.ModelService.Descriptor.Methods.Where(m => !m.IsServerStreaming && !m.IsClientStreaming).Select(m => m.Name).ToHashSet(StringComparer.Ordinal);

    private readonly TimeSpan callTimeout = TimeSpan.FromSeconds(options.Value.CallTimeoutSeconds);
    private readonly int maxRequestBytes = options.Value.MaxRequestBytes;

    /// <summary>
    /// Every call type looks the same on the wire (request messages, then response messages and
    /// trailers), so one duplex method per name carries unary and streaming calls alike.
    /// </summary>
    private static Method<Frame, Frame> Duplex(string name) => new(MethodType.DuplexStreaming, Service, name, Frame.Marshaller, Frame.Marshaller);

    /// <summary>Handles one call; never throws (every failure becomes the call's gRPC status).</summary>
    public async Task ForwardAsync(HttpContext context)
    {
        long started = Stopwatch.GetTimestamp();
        string path = context.Request.Path.Value ?? "";
        string name = path[(path.LastIndexOf('/') + 1)..];
        var call = new ForwardedCall(context);
        Activity.Current?.SetTag("rpc.system", "grpc");
        Activity.Current?.SetTag("rpc.service", Service);
        Activity.Current?.SetTag("rpc.method", name);
        if (Activity.Current is { } activity)
            activity.DisplayName = $"{Service}/{name}";
        try
        {
            if (!context.Request.ContentType?.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) ?? true)
            {
                context.Response.StatusCode = StatusCodes.Status415UnsupportedMediaType;
                call.Status = new Status(StatusCode.Internal, "not a gRPC request");
                return;
            }
            await ForwardCoreAsync(context, call, name);
        }
        catch (Exception) when (context.RequestAborted.IsCancellationRequested)
        {
            call.Status = new Status(StatusCode.Cancelled, "the client cancelled the call");
        }
        catch (RpcException e)
        {
            call.Fail(e.Status, e.Trailers);
        }
        catch (Exception e)
        {
            // A fault of the gateway itself: the log has it, the client gets a status without internals.
            logger.LogError(e, "Forwarding {Method} failed", path);
            call.Fail(new Status(StatusCode.Internal, "the gateway failed to forward this call; its log has the details"), null);
        }
        finally
        {
            var tags = new TagList { { "method", name }, { "status", call.Status.StatusCode.ToString() }, { "key", call.Key } };
            metrics.Requests.Add(1, tags);
            metrics.Duration.Record(Stopwatch.GetElapsedTime(started).TotalSeconds, tags);
            metrics.ActivationBytes.Add(call.ResponseBytes);
        }
    }

    private async Task ForwardCoreAsync(HttpContext context, ForwardedCall call, string name)
    {
        var headers = context.Request.Headers;
        // A path that cannot name a method is UNIMPLEMENTED for anyone, as grpc-aspnetcore answers for its own services;
        // a well-formed one is authorized next, and one that declares no role is refused there.
        if (!string.Equals(context.Request.Path.Value, $"/{Service}/{name}", StringComparison.Ordinal) || !IsMethodName(name))
            throw new RpcException(new Status(StatusCode.Unimplemented, $"'{Truncate(context.Request.Path.Value!)}' is not a method of {Service}"));
        auth.Authorize(context.Request.Path.Value!, headers.Authorization, caller => call.Key = caller.Name);
        var pool = router.Resolve(headers[ModelRouter.ModelHeader].ToString());
        var deadline = DateTime.UtcNow + (GrpcWire.ParseTimeout(headers["grpc-timeout"].ToString()) ?? callTimeout);
        var method = Method(name);
        var ct = context.RequestAborted;
        using var request = new RequestFrames(context.Request.BodyReader, maxRequestBytes);
        // A method known to take one message whose body is exactly one goes as a call carrying it;
        // anything else (a streaming request, a method newer than this gateway, a body of some other
        // count) is passed through as a duplex call, message by message, for the replica to judge.
        var single = SingleRequest.TryGetValue(name, out var singleMethod) ? await request.ReadOnlyMessageAsync(ct) : null;
        for (int attempt = 1; ; attempt++)
        {
            var replica = pool.Pick();
            using var upstreamCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var options = new CallOptions(deadline: deadline, cancellationToken: upstreamCancel.Token);
            using var upstream = single is not null
                ? Upstream.Of(replica.Invoker.AsyncServerStreamingCall(singleMethod!, null, options, single))
                : Upstream.Of(replica.Invoker.AsyncDuplexStreamingCall(method, null, options));
            var pump = upstream.Requests is { } requestStream ? request.PumpAsync(requestStream, upstreamCancel) : Task.CompletedTask;
            try
            {
                // The replica's messages are written into the response as the channel reads them
                // (Frame.Sink); the headers go first, set when the first message arrives.
                var replicaHeaders = await upstream.Headers;
                Frame.Sink.Value = new ResponseSink(context.Response.BodyWriter, () => call.SetHeaders(replicaHeaders, Reserved));
                while (await upstream.Responses.MoveNext(CancellationToken.None))
                {
                    using var frame = upstream.Responses.Current;
                    if (!frame.Written)
                    {
                        if (!call.HasBody)
                            call.SetHeaders(replicaHeaders, Reserved);
                        await GrpcWire.WriteAsync(context.Response.BodyWriter, frame, ct);
                    }
                    else if (!SingleResponse.Contains(name))
                    {
                        await context.Response.BodyWriter.FlushAsync(ct);
                    }
                    call.ResponseBytes += GrpcWire.PrefixBytes + frame.Length;
                }
                await pump;
                if (request.Refusal is { } refusedLate)
                    throw refusedLate;
                call.Finish(upstream.Status(), upstream.Trailers(), Reserved);
                return;
            }
            catch (RpcException e) when (!ct.IsCancellationRequested)
            {
                // The request body was refused: that is the call's status, whatever the replica said after.
                await pump;
                if (request.Refusal is { } refused)
                    throw refused;
                if (e.StatusCode != StatusCode.Unavailable)
                {
                    call.Fail(e.Status, e.Trailers, Reserved);
                    return;
                }
                ReplicaPool.MarkDown(replica);
                logger.LogWarning("The model service for '{Model}' at {Address} is unavailable: {Detail}", pool.Model, replica.Address, e.Status.Detail);
                // A message already written (a unary one may still wait in the response, unflushed) rules out another replica.
                if (call.HasBody || attempt >= pool.Attempts || !request.Replayable)
                {
                    call.Fail(new Status(StatusCode.Unavailable,
                        $"the model service for '{pool.Model}' at {replica.Address} is unavailable ({e.Status.Detail}); retry: the next call goes to another replica if there is one"), e.Trailers, Reserved);
                    return;
                }
            }
        }
    }

    private static bool IsMethodName(string name) =>
        name.Length is > 0 and <= 128 && (char.IsAsciiLetter(name[0]) || name[0] == '_') && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static string Truncate(string s) => s.Length > 80 ? s[..80] + "…" : s;

    private Method<Frame, Frame> Method(string name)
    {
        if (methods.TryGetValue(name, out var known))
            return known;
        if (methods.Count >= MaxMethods)
            throw new RpcException(new Status(StatusCode.Unimplemented, $"'{name}' is not a method of {Service} this gateway has seen, and it forwards at most {MaxMethods} distinct ones"));
        return methods.GetOrAdd(name, Duplex);
    }

    /// <summary>The client's side of one forwarded call: its key, status, bytes and how its response ends.</summary>
    private sealed class ForwardedCall(HttpContext context)
    {
        public string Key { get; set; } = Caller.Anonymous;
        public Status Status { get; set; } = Status.DefaultSuccess;
        public long ResponseBytes { get; set; }

        /// <summary>Whether a message was written to the response (perhaps not yet flushed to the client).</summary>
        public bool HasBody { get; private set; }

        /// <summary>The response's headers, from the replica's: set before its first message is written (the write starts the response).</summary>
        public void SetHeaders(Metadata headers, HashSet<string> reserved)
        {
            HasBody = true;
            var response = context.Response;
            response.StatusCode = StatusCodes.Status200OK;
            response.ContentType = "application/grpc";
            Copy(headers, response.Headers, reserved);
        }

        public void Finish(Status status, Metadata? trailers, HashSet<string>? reserved = null)
        {
            Status = status;
            var response = context.Response;
            if (!response.HasStarted && !HasBody)
            {
                // Trailers-only: the status goes in the headers of a response without a body.
                response.StatusCode = StatusCodes.Status200OK;
                response.ContentType = "application/grpc";
                response.Headers["grpc-status"] = ((int)status.StatusCode).ToString(CultureInfo.InvariantCulture);
                if (status.Detail.Length > 0)
                    response.Headers["grpc-message"] = GrpcWire.EncodeMessage(status.Detail);
                if (trailers is not null)
                    Copy(trailers, response.Headers, reserved);
                return;
            }
            response.AppendTrailer("grpc-status", ((int)status.StatusCode).ToString(CultureInfo.InvariantCulture));
            if (status.Detail.Length > 0)
                response.AppendTrailer("grpc-message", GrpcWire.EncodeMessage(status.Detail));
            foreach (var entry in Entries(trailers, reserved))
                response.AppendTrailer(entry.Key, entry.Value);
        }

        public void Fail(Status status, Metadata? trailers, HashSet<string>? reserved = null) => Finish(status, trailers, reserved);

        private static void Copy(Metadata? from, IHeaderDictionary to, HashSet<string>? reserved)
        {
            foreach (var entry in Entries(from, reserved))
                to.Append(entry.Key, entry.Value);
        }

        private static IEnumerable<KeyValuePair<string, string>> Entries(Metadata? from, HashSet<string>? reserved)
        {
            foreach (var entry in from ?? [])
            {
                if (entry.Key.StartsWith(':') || reserved?.Contains(entry.Key) == true)
                    continue;
                yield return new(entry.Key, entry.IsBinary ? Convert.ToBase64String(entry.ValueBytes) : entry.Value);
            }
        }
    }

    /// <summary>One call to a replica, whichever kind: its request stream (duplex only), responses, headers and how it ended.</summary>
    private sealed class Upstream(IDisposable call, IClientStreamWriter<Frame>? requests, IAsyncStreamReader<Frame> responses,
        Task<Metadata> headers, Func<Status> status, Func<Metadata> trailers) : IDisposable
    {
        public IClientStreamWriter<Frame>? Requests { get; } = requests;
        public IAsyncStreamReader<Frame> Responses { get; } = responses;
        public Task<Metadata> Headers { get; } = headers;
        public Func<Status> Status { get; } = status;
        public Func<Metadata> Trailers { get; } = trailers;

        public static Upstream Of(AsyncServerStreamingCall<Frame> c) => new(c, null, c.ResponseStream, c.ResponseHeadersAsync, c.GetStatus, c.GetTrailers);

        public static Upstream Of(AsyncDuplexStreamingCall<Frame, Frame> c) => new(c, c.RequestStream, c.ResponseStream, c.ResponseHeadersAsync, c.GetStatus, c.GetTrailers);

        public void Dispose() => call.Dispose();
    }

    /// <summary>
    /// The client's request messages, read from its body as the replica takes them and kept (up to
    /// 1 MiB in all) so that a call refused before any response can be sent again.
    /// </summary>
    private sealed class RequestFrames(System.IO.Pipelines.PipeReader body, int maxBytes) : IDisposable
    {
        private const long KeepBytes = 1 << 20;
        private readonly List<Frame> kept = [];
        private long keptBytes;
        private bool ended;
        private bool overflowed;
        // A message read ahead but too large to keep: sent (once) by the first PumpAsync.
        private Frame? pending;

        /// <summary>All of the body was read and kept: another attempt can send it again.</summary>
        public bool Replayable => ended && !overflowed;

        /// <summary>Why the gateway refused the request body (cut short, compressed, too large), if it did.</summary>
        public RpcException? Refusal { get; private set; }

        /// <summary>
        /// Reads the body as far as its first message and the end after it: that message when the body
        /// is exactly one, else null — what was read is kept (and the end noted), so <see cref="PumpAsync"/>
        /// passes the body on as it came. A refused body is kept in <see cref="Refusal"/> and thrown.
        /// </summary>
        public async Task<Frame?> ReadOnlyMessageAsync(CancellationToken ct)
        {
            for (int read = 0; read < 2 && !ended; read++)
            {
                Frame? frame;
                try
                {
                    frame = await GrpcWire.ReadAsync(body, maxBytes, ct);
                }
                catch (RpcException e)
                {
                    Refusal = e;
                    throw;
                }
                if (frame is null)
                {
                    ended = true;
                    break;
                }
                if (keptBytes + frame.Length > KeepBytes)
                {
                    // Too large to keep for another attempt, so it goes by the duplex path, which does not keep it.
                    pending = frame;
                    overflowed = true;
                    return null;
                }
                kept.Add(frame);
                keptBytes += frame.Length;
            }
            return ended && kept.Count == 1 ? kept[0] : null;
        }

        /// <summary>
        /// Sends the kept messages, then the rest of the body, then the end of the request. Never
        /// throws: a refused body cancels the replica's call and is kept in <see cref="Refusal"/>; a
        /// failed write means the replica's call ended, and its status says why.
        /// </summary>
        public async Task PumpAsync(IClientStreamWriter<Frame> upstream, CancellationTokenSource cancel)
        {
            try
            {
                foreach (var frame in kept)
                    await upstream.WriteAsync(frame, cancel.Token);
                if (Interlocked.Exchange(ref pending, null) is { } unkept)
                {
                    using (unkept)
                        await upstream.WriteAsync(unkept, cancel.Token);
                }
                while (!ended)
                {
                    Frame? frame;
                    try
                    {
                        frame = await GrpcWire.ReadAsync(body, maxBytes, cancel.Token);
                    }
                    catch (RpcException e)
                    {
                        Refusal = e;
                        await cancel.CancelAsync();
                        return;
                    }
                    if (frame is null)
                    {
                        ended = true;
                        break;
                    }
                    bool keep = !overflowed && keptBytes + frame.Length <= KeepBytes;
                    if (keep)
                    {
                        kept.Add(frame);
                        keptBytes += frame.Length;
                    }
                    else
                    {
                        overflowed = true;
                    }
                    try
                    {
                        await upstream.WriteAsync(frame, cancel.Token);
                    }
                    finally
                    {
                        if (!keep)
                            frame.Dispose();
                    }
                }
                await upstream.CompleteAsync();
            }
            catch (Exception e) when (e is RpcException or OperationCanceledException or IOException or InvalidOperationException)
            {
                // The replica's call ended (or the client went away): the response side reports it.
            }
        }

        public void Dispose()
        {
            foreach (var frame in kept)
                frame.Dispose();
            pending?.Dispose();
        }
    }
}

/// <summary>Maps the ModelService prefix to the forwarder.</summary>
public static class ModelServiceForwarding
{
    /// <summary>Marks the forwarded route: every method of <see cref="ModelServiceForwarder.Service"/> (tests enumerate what the gateway serves by it).</summary>
    public sealed record ForwardedService(string Name);

    /// <summary>
    /// Maps the prefix ahead of any other endpoint under it (<see cref="RouteEndpointBuilder.Order"/> -1):
    /// the typed ModelService the gateway maps for REST routes only (<see cref="ModelServiceHttpProxy"/>)
    /// also brings gRPC endpoints for its methods, and gRPC calls must not reach them.
    /// </summary>
    public static RouteHandlerBuilder MapModelServiceForwarding(this IEndpointRouteBuilder app)
    {
        var route = app.MapPost($"/{ModelServiceForwarder.Service}/{{method}}", (HttpContext context, ModelServiceForwarder forwarder) => forwarder.ForwardAsync(context))
            .WithMetadata(new ForwardedService(ModelServiceForwarder.Service))
            .WithDisplayName($"{ModelServiceForwarder.Service} (forwarded)");
        route.Add(b => ((RouteEndpointBuilder)b).Order = -1);
        return route;
    }
}
