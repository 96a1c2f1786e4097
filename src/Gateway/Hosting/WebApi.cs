using System.Text.Json;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Routing;
using Microsoft.AspNetCore.Grpc.JsonTranscoding;
using Microsoft.Extensions.Options;

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
        // The metrics endpoint (HTTP/1.1 too, reachable from the monitoring namespace) serves /metrics
        // only: REST/JSON and gRPC-Web answer on the gateway's other HTTP/1.1 endpoints.
        if (MetricsPort(app.Configuration) is int metricsPort)
        {
            app.Use((context, next) => context.Connection.LocalPort != metricsPort || context.Request.Path == "/metrics" ? next(context)
                : ErrorAsync(context, StatusCode.NotFound, StatusCodes.Status404NotFound,
                    $"port {metricsPort} is the gateway's metrics endpoint (Kestrel:Endpoints:Metrics): it serves /metrics only; REST/JSON and gRPC-Web are on its Web endpoint (docs/rest.md)"));
        }
        if (CorsOrigins(app.Configuration).Length > 0)
            app.UseCors();
        // Enabled per endpoint (GatewayApp: the gateway's services and the forwarded ModelService), not
        // for everything: health and reflection stay HTTP/2 gRPC.
        app.UseGrpcWeb(new GrpcWebOptions { DefaultEnabled = false });
        int maxBytes = app.Services.GetRequiredService<IOptions<GatewayOptions>>().Value.MaxRequestBytes;
        app.Use((context, next) => CheckJsonBodyAsync(context, next, maxBytes));
    }

    /// <summary>
    /// Transcoding answers any body that is not JSON with a bare "Request JSON payload is not correctly
    /// formatted."; this says where and what: the parser's reason with its line and byte, and the
    /// message the route takes. The same 400 and error body transcoding gives (code INVALID_ARGUMENT).
    /// </summary>
    private static async Task CheckJsonBodyAsync(HttpContext context, RequestDelegate next, int maxBytes)
    {
        var route = context.GetEndpoint()?.Metadata.GetMetadata<GrpcJsonTranscodingMetadata>();
        if (route is null || !HttpMethods.IsPost(context.Request.Method) || string.IsNullOrEmpty(route.HttpRule.Body))
        {
            await next(context);
            return;
        }
        var body = new MemoryStream();
        var buffer = new byte[16 << 10];
        int read;
        while ((read = await context.Request.Body.ReadAsync(buffer, context.RequestAborted)) > 0)
        {
            if (body.Length + read > maxBytes)
            {
                await ErrorAsync(context, StatusCode.ResourceExhausted, StatusCodes.Status429TooManyRequests,
                    $"the request body is over {maxBytes} bytes, the most this gateway takes (Gateway:MaxRequestBytes); send less, or use gRPC for large requests");
                return;
            }
            body.Write(buffer, 0, read);
        }
        if (body.Length > 0)
        {
            try
            {
                using var _ = JsonDocument.Parse(body.GetBuffer().AsMemory(0, (int)body.Length));
            }
            catch (JsonException e)
            {
                await ErrorAsync(context, StatusCode.InvalidArgument, StatusCodes.Status400BadRequest,
                    $"the request body is not valid JSON: {e.Message} Send a JSON object with the fields of {route.MethodDescriptor.InputType.Name} (docs/rest.md).");
                return;
            }
        }
        body.Position = 0;
        context.Request.Body = body;
        await next(context);
    }

    /// <summary>An error in transcoding's form: the HTTP status of the gRPC status, and <c>{"code", "message", "details"}</c>.</summary>
    private static Task ErrorAsync(HttpContext context, StatusCode code, int httpStatus, string message)
    {
        context.Response.StatusCode = httpStatus;
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(JsonSerializer.Serialize(new { code = (int)code, message, details = Array.Empty<object>() }), context.RequestAborted);
    }

    /// <summary>
    /// The ModelService's REST routes (<see cref="ModelServiceHttpProxy"/>). Its gRPC endpoints are
    /// mapped too (the library maps both), but the forwarder's endpoint is ordered before them, so
    /// gRPC and gRPC-Web calls of the ModelService keep going to the forwarder.
    /// </summary>
    public static GrpcServiceEndpointConventionBuilder MapModelServiceHttpRoutes(this WebApplication app) =>
        app.MapGrpcService<ModelServiceHttpProxy>();

    /// <summary>The port of <c>Kestrel:Endpoints:Metrics:Url</c>, when one is configured with a fixed port.</summary>
    private static int? MetricsPort(IConfiguration configuration) =>
        configuration["Kestrel:Endpoints:Metrics:Url"] is { } url
            && Uri.TryCreate(url.Replace("://+:", "://0.0.0.0:", StringComparison.Ordinal).Replace("://*:", "://0.0.0.0:", StringComparison.Ordinal), UriKind.Absolute, out var uri)
            && uri.Port > 0 ? uri.Port : null;

    private static string[] CorsOrigins(IConfiguration configuration) =>
        configuration.GetSection($"{GatewayOptions.Section}:Cors:Origins").Get<string[]>() ?? [];
}
