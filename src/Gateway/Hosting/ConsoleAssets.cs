using System.Reflection;

namespace InterpMesh.Gateway.Hosting;

/// <summary>
/// The web console (docs/console.md): static files embedded in the gateway's assembly from
/// <c>src/Gateway/Console</c>, served at <c>/</c> and <c>/console/*</c> with a strict
/// Content-Security-Policy (scripts, styles and fetches from this origin only; figures as
/// <c>data:</c> images, which cannot run script). The pages call the REST routes (docs/rest.md)
/// with the key the user typed, kept in session storage. Nothing is fetched from elsewhere.
/// </summary>
public static class ConsoleAssets
{
    /// <summary>The policy every console file is served with.</summary>
    public const string ContentSecurityPolicy =
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

    private const string Prefix = "console/";

    private static readonly Dictionary<string, string> ContentTypes = new(StringComparer.OrdinalIgnoreCase)
    {
        [".html"] = "text/html; charset=utf-8",
        [".js"] = "text/javascript; charset=utf-8",
        [".css"] = "text/css; charset=utf-8",
        [".svg"] = "image/svg+xml",
    };

    /// <summary>Maps <c>GET /</c> (the console's page) and <c>GET /console/{file}</c> for each embedded file.</summary>
    public static void MapConsole(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        var assembly = typeof(ConsoleAssets).Assembly;
        foreach (var resource in assembly.GetManifestResourceNames().Where(n => n.StartsWith(Prefix, StringComparison.Ordinal)))
        {
            string name = resource[Prefix.Length..];
            byte[] content = Read(assembly, resource);
            string type = ContentTypes.GetValueOrDefault(Path.GetExtension(name), "application/octet-stream");
            app.MapGet("/console/" + name, (HttpContext context) => Serve(context, content, type));
            if (name == "index.html")
                app.MapGet("/", (HttpContext context) => Serve(context, content, type));
        }
    }

    private static IResult Serve(HttpContext context, byte[] content, string type)
    {
        var headers = context.Response.Headers;
        headers.ContentSecurityPolicy = ContentSecurityPolicy;
        headers.XContentTypeOptions = "nosniff";
        headers["Referrer-Policy"] = "no-referrer";
        headers.CacheControl = "no-cache";
        return Results.Bytes(content, type);
    }

    private static byte[] Read(Assembly assembly, string resource)
    {
        using var stream = assembly.GetManifestResourceStream(resource)!;
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
