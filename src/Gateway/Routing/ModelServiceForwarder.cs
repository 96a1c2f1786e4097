using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Routing;
using InterpMesh.Routing.Http2;
using InterpMesh.Gateway.Security;
using InterpMesh.Gateway.Telemetry;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Routing;

/// <summary>
/// The ModelService API at the gateway, forwarded by service prefix: every call to
/// <c>/interpmesh.v1.ModelService/*</c> is authenticated and authorized (<see cref="AuthInterceptor.Authorize"/>:
/// the role its proto declares or configuration grants; none is PERMISSION_DENIED),
/// routed by its <c>interpmesh-model</c> metadata to a replica, and its length-prefixed messages
/// are copied both ways without being parsed, over HTTP/2 connections of the gateway's own
/// (<see cref="Replica.Transport"/>; no gRPC client in between) — an RPC added to the model service
/// needs no code here, only its role (declared in its proto, or granted by configuration to one newer
/// than this gateway).
/// <para>
/// Messages are passed whole (a request message through a pooled buffer; a response message read
/// straight into the client's response and committed once all of it has arrived), so a replica failing
/// mid-stream still ends the client's call at a message boundary with a proper UNAVAILABLE status. A
/// call that fails UNAVAILABLE before any response message is retried once on another replica (or, for
/// a <c>dns:///</c> endpoint, on its next address): nothing has reached the client yet. That is the
/// gateway's only retry: a refusal (RESOURCE_EXHAUSTED with its <c>grpc-retry-pushback-ms</c>) goes to
/// the client once and the client's own policy decides.
/// The client's deadline (or <see cref="GatewayOptions.CallTimeoutSeconds"/>) and cancellation
/// carry over to the replica. Request metadata is not forwarded (the API key stays here); response
/// headers and trailers from the replica are.
/// </para>
/// </summary>
public sealed class ModelServiceForwarder(ModelRouter router, AuthInterceptor auth, IOptions<GatewayOptions> options, GatewayMetrics metrics, ILogger<ModelServiceForwarder> logger)
{
    public const string Service = "interpmesh.v1.ModelService";

    /// <summary>Response headers and trailers the forwarder writes itself (or HTTP owns), not copied from the replica.</summary>
    private static readonly HashSet<string> Reserved = new(StringComparer.OrdinalIgnoreCase)
    {
        "grpc-status", "grpc-message", "grpc-status-details-bin", "content-type", "content-length", "grpc-encoding", "grpc-accept-encoding", "te", "date", "server",
    };

    /// <summary>
    /// The methods this gateway knows to take one request message (unary and server-streaming ones):
    /// their body is read ahead, so that a body of exactly one message goes with the request headers.
    /// </summary>
    private static readonly HashSet<string> SingleRequest =
        Contracts.V1.ModelService.Descriptor.Methods.Where(m => !m.IsClientStreaming).Select(m => m.Name).ToHashSet(StringComparer.Ordinal);

    /// <summary>
    /// The methods this gateway knows to answer with one message (unary ones): that message is not
    /// flushed on its own but leaves with the trailers when the call ends, so Kestrel can send both
    /// in one write (a unary call's latency notices each write).
    /// </summary>
    private static readonly HashSet<string> SingleResponse =
        Contracts.V1.ModelService.Descriptor.Methods.Where(m => !m.IsServerStreaming && !m.IsClientStreaming).Select(m => m.Name).ToHashSet(StringComparer.Ordinal);

    /// <summary>The largest response message passed on (the replicas' chunks are at most 3 MiB).</summary>
    private const int MaxResponseMessageBytes = 16 << 20;

    /// <summary>The status of a call whose deadline passed, wherever the forwarder notices it.</summary>
    private static readonly Status DeadlinePassed = new(StatusCode.DeadlineExceeded, "the call's deadline passed before the model service answered");

    private readonly TimeSpan callTimeout = TimeSpan.FromSeconds(options.Value.CallTimeoutSeconds);
    private readonly int maxRequestBytes = options.Value.MaxRequestBytes;

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
        string path = context.Request.Path.Value!;
        // A path that cannot name a method is UNIMPLEMENTED for anyone, as grpc-aspnetcore answers for its own services;
        // a well-formed one is authorized next, and one that declares no role is refused there.
        if (!string.Equals(path, $"/{Service}/{name}", StringComparison.Ordinal) || !IsMethodName(name))
            throw new RpcException(new Status(StatusCode.Unimplemented, $"'{Truncate(path)}' is not a method of {Service}"));
        auth.Authorize(path, headers.Authorization, caller => call.Key = caller.Name);
        var pool = router.Resolve(headers[ModelRouter.ModelHeader].ToString());
        var deadline = DateTime.UtcNow + (GrpcWire.ParseTimeout(headers["grpc-timeout"].ToString()) ?? callTimeout);
        var ct = context.RequestAborted;
        using var request = new RequestFrames(context.Request.BodyReader, maxRequestBytes);
        // A method known to take one message has its body read ahead (to its end, when that is one
        // message), so the request goes whole with its headers and can be sent again; anything else
        // (a streaming request, a method newer than this gateway) is passed on as it comes.
        if (SingleRequest.Contains(name))
            await request.ReadAheadAsync(ct);
        for (int attempt = 1; ; attempt++)
        {
            var replica = pool.Pick();
            var remaining = deadline - DateTime.UtcNow;
            if (remaining <= TimeSpan.Zero)
                throw new RpcException(DeadlinePassed);
            using var upstreamCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
            upstreamCancel.CancelAfter(remaining);
            try
            {
                var (status, trailers) = await CallReplicaAsync(context, call, request, replica.Transport, name, deadline, upstreamCancel);
                if (status.StatusCode != StatusCode.Unavailable)
                {
                    call.Finish(status, trailers, Reserved);
                    return;
                }
                throw new RpcException(status, trailers ?? []);
            }
            catch (RpcException e) when (!ct.IsCancellationRequested)
            {
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

    /// <summary>
    /// One attempt at the call on <paramref name="transport"/>'s next address: the request (its body
    /// as <see cref="RequestFrames.PumpAsync"/> passes it on, with the time left as <c>grpc-timeout</c>),
    /// then the response relayed (<see cref="RelayAsync"/>); its status and trailers are returned.
    /// A failure of the connection is UNAVAILABLE (and the address is skipped for a while), the time
    /// running out DEADLINE_EXCEEDED (also when the replica, keeping the same deadline, broke off first),
    /// a refused request body its refusal — each thrown as an <see cref="RpcException"/>.
    /// </summary>
    private static async Task<(Status Status, Metadata? Trailers)> CallReplicaAsync(HttpContext context, ForwardedCall call, RequestFrames request,
        ReplicaTransport transport, string name, DateTime deadline, CancellationTokenSource upstreamCancel)
    {
        Uri? target = null;
        bool answered = false;
        try
        {
            target = await transport.NextAsync(upstreamCancel.Token);
            (string, string)[] headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", GrpcWire.FormatTimeout(deadline - DateTime.UtcNow))];
            await using var exchange = await transport.StartAsync(target, context.Request.Path.Value!, headers, upstreamCancel.Token);
            // The request goes while the response is read (a streaming request may wait on both sides).
            _ = request.PumpAsync(exchange, upstreamCancel);
            await exchange.ReadHeadersAsync(upstreamCancel.Token);
            answered = true;
            var outcome = await RelayAsync(context, call, exchange, name, deadline, upstreamCancel.Token);
            // The request body was refused: that is the call's status, whatever the replica said after.
            if (request.Refusal is { } refusedLate)
                throw refusedLate;
            return outcome;
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested && e is not RpcException && (e is OperationCanceledException || IsBrokenTransport(e)))
        {
            // A refused request body cancels the replica's call: the refusal is the call's status.
            if (request.Refusal is { } refused)
                throw refused;
            if (e is OperationCanceledException || DateTime.UtcNow >= deadline)
                throw new RpcException(DeadlinePassed);
            if (target is not null)
                transport.Failed(target);
            throw new RpcException(new Status(StatusCode.Unavailable, answered ? $"the model service broke off the call: {Describe(e)}" : Describe(e)));
        }
    }

    /// <summary>
    /// Passes the replica's response on: its headers with the first message, each message whole
    /// (read straight into the client's response, committed only once all of it has arrived, so a
    /// replica failing mid-message leaves nothing of that message behind), and its status and trailers,
    /// returned for the caller to finish the call with. A response that broke off is UNAVAILABLE.
    /// </summary>
    private static async Task<(Status Status, Metadata? Trailers)> RelayAsync(HttpContext context, ForwardedCall call, Http2Exchange response, string name, DateTime deadline, CancellationToken token)
    {
        if (response.StatusCode != StatusCodes.Status200OK)
            return (GrpcWire.StatusOfHttp(response.StatusCode), null);
        // Trailers-only: the status is in the headers, and there is no body.
        if (GrpcWire.Find(response.Headers, "grpc-status") is not null)
            return GrpcWire.StatusOf(response.Headers);
        string? type = GrpcWire.Find(response.Headers, "content-type");
        if (type is null || !type.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase))
            return (new Status(StatusCode.Internal, $"the model service answered with content type '{Truncate(type ?? "")}', not gRPC"), null);
        var body = response.Body;
        var writer = context.Response.BodyWriter;
        var prefix = new byte[GrpcWire.PrefixBytes];
        bool flushEach = !SingleResponse.Contains(name);
        while (true)
        {
            int read = await body.ReadAtLeastAsync(prefix, GrpcWire.PrefixBytes, throwOnEndOfStream: false, token);
            if (read == 0)
                break;
            if (read < GrpcWire.PrefixBytes)
                throw new RpcException(new Status(StatusCode.Unavailable, "the model service's response ended inside a message"));
            var (compressed, length) = GrpcWire.Prefix(prefix);
            if (compressed)
                return (new Status(StatusCode.Internal, "the model service sent a compressed message, which the gateway did not ask for"), null);
            if (length > MaxResponseMessageBytes)
                return (new Status(StatusCode.ResourceExhausted, $"the model service sent a {length}-byte message; the gateway passes on at most {MaxResponseMessageBytes}"), null);
            if (!call.HasBody)
                call.SetHeaders(response);
            int total = GrpcWire.PrefixBytes + (int)length;
            var memory = writer.GetMemory(total);
            prefix.CopyTo(memory);
            await body.ReadExactlyAsync(memory[GrpcWire.PrefixBytes..total], token);
            writer.Advance(total);
            call.ResponseBytes += total;
            // Not with the call's token: Kestrel aborts a response whose flush is cancelled (RST_STREAM
            // INTERNAL_ERROR), where a call past its deadline must end with DEADLINE_EXCEEDED; the next
            // read from the replica notices the deadline.
            if (flushEach)
                await writer.FlushAsync(context.RequestAborted);
        }
        if (response.Trailers is { } trailers && GrpcWire.Find(trailers, "grpc-status") is not null)
            return GrpcWire.StatusOf(trailers);
        return (DateTime.UtcNow >= deadline
            ? DeadlinePassed
            : new Status(StatusCode.Internal, "the model service's response ended without a gRPC status"), null);
    }

    /// <summary>A failure of the connection to the replica rather than of the gateway.</summary>
    private static bool IsBrokenTransport(Exception e) => e is IOException or HttpRequestException or ObjectDisposedException;

    /// <summary>What went wrong with the connection, in a line: the message of each exception in the chain, no stack or paths.</summary>
    private static string Describe(Exception e)
    {
        var parts = new List<string>();
        for (var x = e; x is not null && parts.Count < 3; x = x.InnerException)
            parts.Add(x.Message.TrimEnd('.'));
        return Truncate(string.Join(": ", parts.Distinct()), 240);
    }

    private static bool IsMethodName(string name) =>
        name.Length is > 0 and <= 128 && (char.IsAsciiLetter(name[0]) || name[0] == '_') && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static string Truncate(string s, int max = 80) => s.Length > max ? s[..max] + "…" : s;

    /// <summary>The client's side of one forwarded call: its key, status, bytes and how its response ends.</summary>
    private sealed class ForwardedCall(HttpContext context)
    {
        public string Key { get; set; } = Caller.Anonymous;
        public Status Status { get; set; } = Status.DefaultSuccess;
        public long ResponseBytes { get; set; }

        /// <summary>Whether a message was written to the response (perhaps not yet flushed to the client).</summary>
        public bool HasBody { get; private set; }

        /// <summary>The response's headers, from the replica's: set before its first message is written (the write starts the response).</summary>
        public void SetHeaders(Http2Exchange replica)
        {
            HasBody = true;
            var response = context.Response;
            response.StatusCode = StatusCodes.Status200OK;
            response.ContentType = "application/grpc";
            foreach (var (key, value) in replica.Headers)
            {
                if (!Reserved.Contains(key))
                    response.Headers.Append(key, value);
            }
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
        /// Reads the body as far as its first message and the end after it, keeping what it read (and
        /// noting the end), so that a body of one message goes whole and can be sent again;
        /// <see cref="PumpAsync"/> passes the body on as it came. A refused body is kept in
        /// <see cref="Refusal"/> and thrown.
        /// </summary>
        public async Task ReadAheadAsync(CancellationToken ct)
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
                    // Too large to keep for another attempt: sent once, by the first PumpAsync.
                    pending = frame;
                    overflowed = true;
                    return;
                }
                kept.Add(frame);
                keptBytes += frame.Length;
            }
        }

        /// <summary>
        /// Writes the kept messages to the replica's request body, then the rest of the client's body
        /// as it arrives; returning ends the request. Never throws: a refused body (or a client gone)
        /// cancels the replica's call — the refusal is kept in <see cref="Refusal"/>; a failed write
        /// means the replica's call ended, and its status says why.
        /// </summary>
        public async Task PumpAsync(Http2Exchange upstream, CancellationTokenSource cancel)
        {
            try
            {
                var unkept = Interlocked.Exchange(ref pending, null);
                // A body read to its end leaves whole: headers, messages and the end in one write.
                for (int i = 0; i < kept.Count; i++)
                    await GrpcWire.WriteAsync(upstream, kept[i], ended && unkept is null && i == kept.Count - 1, cancel.Token);
                if (unkept is not null)
                {
                    using (unkept)
                        await GrpcWire.WriteAsync(upstream, unkept, false, cancel.Token);
                }
                if (ended && (kept.Count == 0 || unkept is not null))
                    await upstream.WriteAsync(default, endStream: true, cancel.Token);
                while (!ended)
                {
                    // The replica sees the call (its headers, the messages so far) before the client's next message.
                    await upstream.FlushAsync(cancel.Token);
                    Frame? frame;
                    try
                    {
                        frame = await GrpcWire.ReadAsync(body, maxBytes, cancel.Token);
                    }
                    catch (Exception e) when (e is RpcException or OperationCanceledException or IOException or InvalidOperationException)
                    {
                        // The request cannot be completed: the replica's call is cancelled, not ended as if it were whole.
                        Refusal = e as RpcException;
                        await cancel.CancelAsync();
                        return;
                    }
                    if (frame is null)
                    {
                        ended = true;
                        await upstream.WriteAsync(default, endStream: true, cancel.Token);
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
                        await GrpcWire.WriteAsync(upstream, frame, false, cancel.Token);
                    }
                    finally
                    {
                        if (!keep)
                            frame.Dispose();
                    }
                }
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or HttpRequestException or ObjectDisposedException or InvalidOperationException)
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
