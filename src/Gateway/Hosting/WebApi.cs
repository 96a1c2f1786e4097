using Grpc.AspNetCore.Server;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Routing;

namespace InterpMesh.Gateway.Hosting;

/// <summary>
/// The gateway for browsers and curl (docs/rest.md): REST/JSON by gRPC JSON transcoding of the
/// <c>google.api.http</c> routes the protos declare, and gRPC-Web. Both are the same RPCs with the
/// same interceptors (API key in the <c>Authorization</c> header, roles, rate limits, error
/// statuses), reached over HTTP/1.1: give the gateway an HTTP/1.1 Kestrel endpoint
/// (<c>Kestrel:Endpoints:Web</c>) beside its HTTP/2 gRPC one. Cross-origin access is off unless
/// <c>Gateway:Cors:Origins</c> lists origins: without them no response carries CORS headers.
/// </summary>
public static class WebApi
{
    /// <summary>Request headers a browser page may send cross-origin: the key, the model, and gRPC-Web's own.</summary>
    private static readonly string[] AllowedHeaders = ["authorization", "content-type", Contracts.Headers.Model, "x-grpc-web", "x-user-agent", "grpc-timeout"];

    /// <summary>Response headers a page may read: a gRPC-Web call that fails before any message carries its status in them.</summary>
    private static readonly string[] ExposedHeaders = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

    /// <summary>JSON transcoding, gRPC-Web and, when origins are configured, the CORS policy for them.</summary>
    public static void AddWebApi(this WebApplicationBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddGrpc().AddJsonTranscoding();
        var origins = CorsOrigins(builder.Configuration);
        if (origins.Length == 0)
            return;
        builder.Services.AddCors(o => o.AddDefaultPolicy(p => p
            .WithOrigins(origins)
            .WithMethods("GET", "POST")
            .WithHeaders(AllowedHeaders)
            .WithExposedHeaders(ExposedHeaders)));
    }

    /// <summary>
    /// The middleware, after routing (it reads the matched endpoint): CORS when configured, then
    /// gRPC-Web, which turns a gRPC-Web request for an endpoint that enables it into a gRPC call.
    /// </summary>
    public static void UseWebApi(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        if (CorsOrigins(app.Configuration).Length > 0)
            app.UseCors();
        // Enabled per endpoint (GatewayApp: the gateway's services and the forwarded ModelService), not
        // for everything: health and reflection stay HTTP/2 gRPC.
        app.UseGrpcWeb(new GrpcWebOptions { DefaultEnabled = false });
    }

    /// <summary>
    /// The ModelService's REST routes (<see cref="ModelServiceHttpProxy"/>). Its gRPC endpoints are
    /// mapped too (the library maps both), but the forwarder's endpoint is ordered before them, so
    /// gRPC and gRPC-Web calls of the ModelService keep going to the forwarder.
    /// </summary>
    public static GrpcServiceEndpointConventionBuilder MapModelServiceHttpRoutes(this WebApplication app) =>
        app.MapGrpcService<ModelServiceHttpProxy>();

    private static string[] CorsOrigins(IConfiguration configuration) =>
        configuration.GetSection($"{GatewayOptions.Section}:Cors:Origins").Get<string[]>() ?? [];
}
