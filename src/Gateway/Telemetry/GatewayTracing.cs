using System.Diagnostics;

namespace InterpMesh.Gateway.Telemetry;

/// <summary>The gateway's own spans (source <c>InterpMesh.Gateway</c>): one <c>interpmesh.job</c> per analysis run.</summary>
public static class GatewayTracing
{
    public const string SourceName = "InterpMesh.Gateway";

    public static ActivitySource Source { get; } = new(SourceName);
}
