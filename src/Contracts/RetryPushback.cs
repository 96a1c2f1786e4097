using Grpc.Core;

namespace InterpMesh.Contracts;

/// <summary>
/// The standard <c>grpc-retry-pushback-ms</c> trailer servers put on a refusal (gRFC A6): how long
/// a client waits before it retries, or that it must not retry.
/// </summary>
public static class RetryPushback
{
    /// <summary>The trailer's name.</summary>
    public const string Trailer = "grpc-retry-pushback-ms";

    /// <summary>Trailers saying "retry after <paramref name="wait"/>" (whole milliseconds, rounded up).</summary>
    public static Metadata After(TimeSpan wait) =>
        new() { { Trailer, ((long)Math.Ceiling(Math.Max(0, wait.TotalMilliseconds))).ToString(System.Globalization.CultureInfo.InvariantCulture) } };

    /// <summary>Trailers saying "do not retry": the refusal holds for this request whenever it is sent.</summary>
    public static Metadata Never() => new() { { Trailer, "-1" } };
}
