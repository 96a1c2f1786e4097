using System.Collections.Concurrent;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;

namespace InterpMesh.Tests;

/// <summary>
/// A minimal OTLP/HTTP trace collector on a loopback port: it keeps the body of every export posted
/// to <c>/v1/traces</c>, so a test can check which spans a real service exported.
/// </summary>
internal sealed class OtlpCollector : IAsyncDisposable
{
    private readonly WebApplication app;
    private readonly ConcurrentQueue<byte[]> bodies = new();

    private OtlpCollector(WebApplication app, string endpoint)
    {
        this.app = app;
        Endpoint = endpoint;
    }

    /// <summary>The collector's base URL, for a service's <c>OtlpEndpoint</c> (with <c>OtlpProtocol = http/protobuf</c>).</summary>
    public string Endpoint { get; }

    /// <summary>The export bodies received so far (OTLP protobuf).</summary>
    public IReadOnlyCollection<byte[]> Bodies => bodies;

    /// <summary>Every export body concatenated and read as UTF-8, for string searches of span names and attributes.</summary>
    public string AllText => Encoding.UTF8.GetString(bodies.SelectMany(b => b).ToArray());

    public static async Task<OtlpCollector> StartAsync()
    {
        int port = Ports.Free();
        var builder = WebApplication.CreateSlimBuilder();
        // Not the appsettings.json of whichever service sits in the test output.
        builder.Configuration.Sources.Clear();
        builder.Configuration.AddInMemoryCollection();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        var app = builder.Build();
        var collector = new OtlpCollector(app, $"http://127.0.0.1:{port}");
        app.MapPost("/v1/traces", async (HttpContext context) =>
        {
            using var body = new MemoryStream();
            await context.Request.Body.CopyToAsync(body);
            collector.bodies.Enqueue(body.ToArray());
        });
        await app.StartAsync();
        return collector;
    }

    /// <summary>
    /// Whether one export from <paramref name="serviceName"/> holds a span named
    /// <paramref name="span"/> in trace <paramref name="traceIdHex"/> (the id's 16 bytes appear raw in OTLP protobuf).
    /// </summary>
    public bool Exported(string serviceName, string traceIdHex, string span)
    {
        var id = Convert.FromHexString(traceIdHex);
        return bodies.Any(b =>
        {
            string text = Encoding.UTF8.GetString(b);
            return text.Contains(serviceName, StringComparison.Ordinal) && text.Contains(span, StringComparison.Ordinal) && b.AsSpan().IndexOf(id) >= 0;
        });
    }

    public ValueTask DisposeAsync() => app.DisposeAsync();
}
