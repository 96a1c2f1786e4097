using System.Threading.RateLimiting;
using Grpc.Core;
using Grpc.Core.Interceptors;
using InterpMesh.Contracts;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Security;

/// <summary>
/// Authentication, authorisation and per-key rate limits for every gRPC call except the health
/// and reflection services. Missing or unknown key: UNAUTHENTICATED; role too weak, or an RPC that
/// declares no role (<see cref="RpcRoles"/>: it fails closed): PERMISSION_DENIED; over the key's
/// rate: RESOURCE_EXHAUSTED with the standard
/// <c>grpc-retry-pushback-ms</c> trailer: when the key's next token comes. The configured rate and
/// burst are the deployment's: each of the <see cref="ReplicaShare.Replicas"/> gateways sharing the
/// job store enforces its share, so adding replicas does not multiply a key's allowance.
/// </summary>
public sealed class AuthInterceptor : Interceptor, IDisposable
{
    private static readonly Caller Local = new(Caller.Anonymous, Role.Admin);
    private readonly ApiKeys keys;
    private readonly RpcRoles roles;
    private readonly PartitionedRateLimiter<(string Key, int Replicas)>? limiter;
    private readonly ReplicaShare share;

    public AuthInterceptor(ApiKeys keys, RpcRoles roles, IOptions<GatewayOptions> options, ReplicaShare share)
    {
        this.keys = keys;
        this.roles = roles;
        this.share = share;
        var rate = options.Value.RateLimit;
        if (rate.RequestsPerSecond > 0)
        {
            // One bucket per key and replica count: when replicas come or go, a key's next call
            // starts a bucket of the new share (the old one idles out).
            limiter = PartitionedRateLimiter.Create<(string Key, int Replicas), (string, int)>(p => RateLimitPartition.GetTokenBucketLimiter(p, _ => new TokenBucketRateLimiterOptions
            {
                TokenLimit = ReplicaShare.BurstOf(rate.Burst, p.Replicas),
                TokensPerPeriod = 1,
                ReplenishmentPeriod = TimeSpan.FromSeconds(Math.Max(0.001, 1.0 / ReplicaShare.RateOf(rate.RequestsPerSecond, p.Replicas))),
                QueueLimit = 0,
                AutoReplenishment = true,
            }));
        }
    }

    private static bool Exempt(string fullMethod) =>
        fullMethod.StartsWith("/grpc.health.v1.Health/", StringComparison.Ordinal) || fullMethod.StartsWith("/grpc.reflection.", StringComparison.Ordinal);

    private void Check(ServerCallContext context)
    {
        if (Exempt(context.Method))
            return;
        Authorize(context.Method, context.RequestHeaders.GetValue("authorization"), caller => context.UserState[Caller.StateKey] = caller);
    }

    /// <summary>
    /// The caller of <paramref name="fullMethod"/> holding the key in <paramref name="authorization"/>
    /// (<c>Bearer &lt;key&gt;</c>), once its role and rate allow the call; otherwise an
    /// <see cref="RpcException"/> saying why. Used by the interceptor and by the ModelService forwarder.
    /// <paramref name="identified"/> hears of the caller as soon as the key is known, so a call refused
    /// for its role or rate is still labelled with the key's name.
    /// </summary>
    public Caller Authorize(string fullMethod, string? authorization, Action<Caller>? identified = null)
    {
        Caller caller;
        if (!keys.Enabled)
        {
            caller = Local;
        }
        else
        {
            if (string.IsNullOrEmpty(authorization) || !authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
                throw new RpcException(new Status(StatusCode.Unauthenticated, "this gateway requires an API key: send metadata 'authorization: Bearer <key>'"));
            caller = keys.Authenticate(authorization["Bearer ".Length..].Trim())
                ?? throw new RpcException(new Status(StatusCode.Unauthenticated, "the API key is not valid; check it, or ask an administrator for a new one"));
        }
        identified?.Invoke(caller);
        // Fails closed: an RPC that declares no role is refused for every key, admin included.
        var role = roles.For(fullMethod)
            ?? throw new RpcException(new Status(StatusCode.PermissionDenied,
                $"{Shortened(fullMethod)} declares no role, so this gateway refuses it; an administrator can grant one with Gateway:Authorization:Roles:{Shortened(fullMethod.TrimStart('/'))}=read|analyze|admin"));
        if (!caller.Has(role))
            throw new RpcException(new Status(StatusCode.PermissionDenied, $"key '{caller.Name}' lacks the '{RoleNames.Of(role)}' role needed for {fullMethod}"));
        if (limiter is not null)
        {
            using var lease = limiter.AttemptAcquire((caller.Name, share.Replicas));
            if (!lease.IsAcquired)
            {
                var wait = lease.TryGetMetadata(MetadataName.RetryAfter, out var retry) ? retry : TimeSpan.FromSeconds(1);
                throw new RpcException(new Status(StatusCode.ResourceExhausted, $"key '{caller.Name}' is over its rate limit; retry after {Math.Ceiling(wait.TotalMilliseconds)} ms"),
                    RetryPushback.After(wait));
            }
        }
        return caller;
    }

    /// <summary>A method path cut short for a message: <see cref="Authorize"/> is public and takes any path.</summary>
    private static string Shortened(string text) => text.Length > 120 ? text[..120] + "…" : text;

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, responseStream, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(requestStream, context);
    }

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(requestStream, responseStream, context);
    }

    public void Dispose() => limiter?.Dispose();
}
