using System.Text;
using System.Text.RegularExpressions;
using InterpMesh.AnalysisWorker.Configuration;
using InterpMesh.Gateway.Configuration;
using InterpMesh.ModelService.Configuration;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// A service's configuration as its pod sees it: the ConfigMap's appsettings.json mounted over the
/// image's, plus the container's environment (<c>Gateway__JobsPath</c> = <c>Gateway:JobsPath</c>,
/// <c>$(VAR)</c> expanded as the kubelet does). Bound to the service's options class strictly (a key
/// the class lacks is an error) and checked by the service's own validator, with every path the
/// options name looked up on the pod's volumes, laid out in a scratch folder.
/// </summary>
internal static partial class Services
{
    public const string AppSettingsPath = "/app/appsettings.json";

    private static readonly string[] TopLevelKeys = ["Kestrel", "Logging", "shutdownTimeoutSeconds"];

    /// <param name="WebPort">The gateway's HTTP/1.1 endpoint for REST/JSON and gRPC-Web (docs/rest.md); null for the other services.</param>
    public sealed record Bound<T>(T Options, IConfiguration Configuration, int GrpcPort, int MetricsPort, int? WebPort = null);

    public static Bound<GatewayOptions> Gateway(Manifests manifests) =>
        Gateway(manifests, manifests.Single<V1Deployment>("gateway").Spec.Template, json: null);

    public static Bound<GatewayOptions> Gateway(Manifests manifests, V1PodTemplateSpec template, string? json)
    {
        var (configuration, container) = PodConfiguration(manifests, template, GatewayOptions.Section, json);
        var o = configuration.GetSection(GatewayOptions.Section).Get<GatewayOptions>(b => b.ErrorOnUnknownConfiguration = true)
            ?? throw new InvalidOperationException("no Gateway section");
        // Check against the pod's volumes, laid out in a scratch folder.
        var pod = new PodFiles(manifests, template.Spec, container);
        o.ArtifactsPath = pod.Locate(o.ArtifactsPath, "Gateway:ArtifactsPath", need: PodFiles.Need.WritableFolder);
        o.JobsPath = pod.Locate(o.JobsPath, "Gateway:JobsPath", need: PodFiles.Need.WritableFolder);
        if (o.Auth.KeysFile is { Length: > 0 } keys)
            o.Auth.KeysFile = pod.Locate(keys, "Gateway:Auth:KeysFile", need: PodFiles.Need.SecretFile);
        // Settings that moved to the analysis worker are refused, as the gateway refuses them at start.
        o.MovedKeysSet.AddRange(GatewayOptionsValidator.MovedKeys(configuration));
        Check(new GatewayOptionsValidator().Validate(null, o), "gateway");
        return Checked(o, configuration, container, web: true);
    }

    public static Bound<WorkerOptions> Worker(Manifests manifests) =>
        Worker(manifests, manifests.Single<V1Deployment>("worker").Spec.Template, json: null);

    public static Bound<WorkerOptions> Worker(Manifests manifests, V1PodTemplateSpec template, string? json)
    {
        var (configuration, container) = PodConfiguration(manifests, template, WorkerOptions.Section, json);
        var o = configuration.GetSection(WorkerOptions.Section).Get<WorkerOptions>(b => b.ErrorOnUnknownConfiguration = true)
            ?? throw new InvalidOperationException("no Worker section");
        var pod = new PodFiles(manifests, template.Spec, container);
        o.PluginsPath = pod.Locate(o.PluginsPath, "Worker:PluginsPath", need: PodFiles.Need.Folder);
        o.ArtifactsPath = pod.Locate(o.ArtifactsPath, "Worker:ArtifactsPath", need: PodFiles.Need.WritableFolder);
        Check(new WorkerOptionsValidator().Validate(null, o), "worker");
        return Checked(o, configuration, container);
    }

    public static Bound<ModelServiceOptions> ModelService(Manifests manifests, V1Deployment deployment) =>
        ModelService(manifests, deployment.Spec.Template, json: null);

    public static Bound<ModelServiceOptions> ModelService(Manifests manifests, V1PodTemplateSpec template, string? json)
    {
        var (configuration, container) = PodConfiguration(manifests, template, ModelServiceOptions.Section, json);
        var o = configuration.GetSection(ModelServiceOptions.Section).Get<ModelServiceOptions>(b => b.ErrorOnUnknownConfiguration = true)
            ?? throw new InvalidOperationException("no ModelService section");
        var pod = new PodFiles(manifests, template.Spec, container);
        // The model itself is put on the volume by an operator: its place must be on a volume.
        o.ModelPath = pod.Locate(o.ModelPath, "ModelService:ModelPath", need: PodFiles.Need.VolumeFile);
        if (o.TokenizerPath is { Length: > 0 } tokenizer)
            o.TokenizerPath = pod.Locate(tokenizer, "ModelService:TokenizerPath", need: PodFiles.Need.VolumeFile);
        Check(new ModelServiceOptionsValidator().Validate(null, o), "model service");
        return Checked(o, configuration, container);
    }

    /// <summary>HostOptions.ShutdownTimeout as a real ASP.NET Core host reads it from the pod's configuration.</summary>
    public static TimeSpan HostShutdownTimeout(Manifests manifests, V1PodTemplateSpec template)
    {
        var container = template.Spec.Containers.Single();
        string json = AppSettings(manifests, template.Spec, container);
        string root = Directory.CreateTempSubdirectory("interpmesh-host-").FullName;
        try
        {
            var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = root, EnvironmentName = "Production" });
            builder.Configuration.AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json)));
            builder.Configuration.AddInMemoryCollection(Environment(container));
            var app = builder.Build();
            try
            {
                return app.Services.GetRequiredService<IOptions<HostOptions>>().Value.ShutdownTimeout;
            }
            finally
            {
                ((IDisposable)app).Dispose();
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    public static string AppSettings(Manifests manifests, V1PodSpec pod, V1Container container)
    {
        var mount = container.VolumeMounts.SingleOrDefault(m => m.MountPath == AppSettingsPath)
            ?? throw new InvalidOperationException($"container {container.Name} mounts no ConfigMap at {AppSettingsPath}");
        if (mount.SubPath != "appsettings.json")
            throw new InvalidOperationException($"container {container.Name}: mount the ConfigMap's appsettings.json key with subPath (got '{mount.SubPath}')");
        var configMap = manifests.ConfigMapOfVolume(pod, mount.Name);
        return configMap.Data.TryGetValue("appsettings.json", out var json) ? json
            : throw new InvalidOperationException($"ConfigMap {configMap.Metadata.Name} has no appsettings.json");
    }

    private static (IConfiguration, V1Container) PodConfiguration(Manifests manifests, V1PodTemplateSpec template, string section, string? json)
    {
        var container = template.Spec.Containers.Single();
        json ??= AppSettings(manifests, template.Spec, container);
        var configuration = new ConfigurationBuilder()
            .AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json)))
            .AddInMemoryCollection(Environment(container))
            .Build();
        var unknown = new ConfigurationBuilder().AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json))).Build()
            .GetChildren().Select(c => c.Key).Where(k => k != section && !TopLevelKeys.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new InvalidOperationException($"appsettings.json has top-level keys no one reads: {string.Join(", ", unknown)}");
        var strayEnv = (container.Env ?? []).Where(e => e.Name.Contains("__", StringComparison.Ordinal) && !e.Name.StartsWith(section + "__", StringComparison.Ordinal)).ToList();
        if (strayEnv.Count > 0)
            throw new InvalidOperationException($"environment {string.Join(", ", strayEnv.Select(e => e.Name))} is not in the {section} section");
        return (configuration, container);
    }

    /// <summary>The container's environment as configuration keys, <c>$(VAR)</c> expanded (field refs get a sample value).</summary>
    private static Dictionary<string, string?> Environment(V1Container container)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var e in container.Env ?? [])
        {
            string value = e.ValueFrom?.FieldRef is { } field ? $"sample-{field.FieldPath.Replace('.', '-')}"
                : VariableReference().Replace(e.Value ?? "", m => values.TryGetValue(m.Groups[1].Value, out var v) ? v : m.Value);
            values[e.Name] = value;
        }
        return values.ToDictionary(kv => kv.Key.Replace("__", ":", StringComparison.Ordinal), kv => (string?)kv.Value, StringComparer.OrdinalIgnoreCase);
    }

    private static Bound<T> Checked<T>(T options, IConfiguration configuration, V1Container container, bool web = false)
    {
        string[] expected = web ? ["Grpc", "Metrics", "Web"] : ["Grpc", "Metrics"];
        int grpc = KestrelPort(configuration, "Grpc", "Http2", expected);
        int metrics = KestrelPort(configuration, "Metrics", "Http1", expected);
        if (grpc != InvariantTests.Port(container, "grpc") || metrics != InvariantTests.Port(container, "metrics"))
            throw new InvalidOperationException($"{container.Name}: Kestrel listens on gRPC {grpc} and metrics {metrics}, the container declares {InvariantTests.Port(container, "grpc")} and {InvariantTests.Port(container, "metrics")}");
        int? webPort = null;
        if (web)
        {
            webPort = KestrelPort(configuration, "Web", "Http1", expected);
            if (webPort != InvariantTests.Port(container, "web"))
                throw new InvalidOperationException($"{container.Name}: Kestrel listens for REST/gRPC-Web on {webPort}, the container declares {InvariantTests.Port(container, "web")}");
        }
        return new Bound<T>(options, configuration, grpc, metrics, webPort);
    }

    /// <summary>The port of Kestrel endpoint <paramref name="name"/>, which must listen on every interface with the given protocol.</summary>
    private static int KestrelPort(IConfiguration configuration, string name, string protocols, string[] expected)
    {
        var endpoints = configuration.GetSection("Kestrel:Endpoints");
        var names = endpoints.GetChildren().Select(c => c.Key).Order(StringComparer.Ordinal).ToList();
        if (!names.SequenceEqual(expected))
            throw new InvalidOperationException($"Kestrel:Endpoints must be {string.Join(", ", expected)}, got {string.Join(", ", names)}");
        var endpoint = endpoints.GetSection(name);
        var keys = endpoint.GetChildren().Select(c => c.Key).Where(k => k is not ("Url" or "Protocols")).ToList();
        if (keys.Count > 0)
            throw new InvalidOperationException($"Kestrel:Endpoints:{name} has keys this deployment does not expect: {string.Join(", ", keys)}");
        if (endpoint["Protocols"] != protocols)
            throw new InvalidOperationException($"Kestrel:Endpoints:{name}:Protocols must be {protocols}, got '{endpoint["Protocols"]}'");
        var url = new Uri(endpoint["Url"]!.Replace("://+:", "://0.0.0.0:", StringComparison.Ordinal).Replace("://*:", "://0.0.0.0:", StringComparison.Ordinal));
        if (url.Host is not ("0.0.0.0" or "[::]"))
            throw new InvalidOperationException($"Kestrel:Endpoints:{name}:Url {url} must listen on all interfaces in a pod (0.0.0.0), or the kubelet and other pods cannot reach it");
        return url.Port;
    }

    private static void Check(ValidateOptionsResult result, string service)
    {
        if (result.Failed)
            throw new InvalidOperationException($"the {service}'s validator rejects the rendered configuration: {result.FailureMessage}");
    }

    [GeneratedRegex(@"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")]
    private static partial Regex VariableReference();
}
