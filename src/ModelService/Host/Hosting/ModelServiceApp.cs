using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Grpc;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;

namespace InterpMesh.ModelService.Hosting;

/// <summary>Builds the ModelService web application (used by Program.cs, the CLI's serve and tests).</summary>
public static class ModelServiceApp
{
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(args);
        configure?.Invoke(builder);
        builder.Services.AddOptions<ModelServiceOptions>().BindConfiguration(ModelServiceOptions.Section).ValidateOnStart();
        builder.Services.AddSingleton<IValidateOptions<ModelServiceOptions>, ModelServiceOptionsValidator>();
        builder.Services.AddSingleton<ModelHost>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<ModelHost>());
        builder.Services.AddGrpc(o => o.EnableDetailedErrors = false);
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks().AddCheck<ModelHostHealth>("model");
        builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = HttpProtocols.Http2));

        var app = builder.Build();
        app.MapGrpcService<ModelServiceEndpoint>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
        return app;
    }

    /// <summary>Adapts the host's load state to ASP.NET health checks (and so to the gRPC health service).</summary>
    private sealed class ModelHostHealth(ModelHost host) : Microsoft.Extensions.Diagnostics.HealthChecks.IHealthCheck
    {
        public Task<Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult> CheckHealthAsync(
            Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckContext context, CancellationToken cancellationToken = default) =>
            host.CheckHealthAsync(context, cancellationToken);
    }
}
