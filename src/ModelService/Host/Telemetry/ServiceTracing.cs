using System.Diagnostics;

namespace InterpMesh.ModelService.Telemetry;

/// <summary>
/// The ModelService's spans (source <c>InterpMesh.ModelService</c>): one per forward
/// (<c>interpmesh.forward</c>, linked to every request a batched forward served) and one per
/// generation (<c>interpmesh.generate</c>), under ASP.NET Core's span for the gRPC call. Exported
/// over OTLP when <c>ModelService:OtlpEndpoint</c> or <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> is set.
/// </summary>
public static class ServiceTracing
{
    public const string SourceName = "InterpMesh.ModelService";

    /// <summary>The engine's spans: <c>interpmesh.forward</c> (batched Runs), <c>interpmesh.prefill</c>, <c>interpmesh.decode</c>.</summary>
    public const string EngineSourceName = "InterpMesh.Engine";

    public static ActivitySource Source { get; } = new(SourceName);
}
