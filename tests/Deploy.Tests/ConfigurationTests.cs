using System.Text.Json;
using InterpMesh.Gateway.Configuration;
using k8s.Models;

namespace InterpMesh.Deploy.Tests;

/// <summary>The keys the manifests set exist in the services' options, and the services' validators accept their values.</summary>
public sealed class ConfigurationTests
{
    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void The_rendered_configuration_binds_to_the_services_options_and_passes_their_validation(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var gateway = Services.Gateway(manifests);
        Assert.True(gateway.Options.Auth.Enabled, "authentication must be on in a cluster");
        // Plugins (and their hot reload, for development) are the analysis workers' now: none of their settings is left on the gateway.
        Assert.Empty(GatewayOptionsValidator.MovedKeys(gateway.Configuration));
        Assert.Equal(50050, gateway.GrpcPort);
        Assert.Equal(9465, gateway.MetricsPort);
        Assert.Equal(50080, gateway.WebPort);
        foreach (var deployment in manifests.ModelServices())
        {
            var model = Services.ModelService(manifests, deployment);
            Assert.Equal(50051, model.GrpcPort);
            Assert.Equal(9464, model.MetricsPort);
        }
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void The_workers_configuration_binds_to_its_options_and_passes_its_validation(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var worker = Services.Worker(manifests);
        Assert.False(worker.Options.HotReload, "plugin hot reload is for development");
        Assert.True(worker.Options.RecycleStuckPlugins, "a worker in a pod recycles itself (restartPolicy Always) rather than keep a stuck plugin");
        Assert.Equal(50052, worker.GrpcPort);
        Assert.Equal(9465, worker.MetricsPort);
        // Workers reach the same models as the gateways, by the same names.
        var gateway = Services.Gateway(manifests);
        Assert.Equal(gateway.Options.Models.Keys.Order(), worker.Options.Models.Keys.Order());
        foreach (var (model, route) in worker.Options.Models)
            Assert.Equal(gateway.Options.Models[model].Endpoints, route.Endpoints);
        Assert.Equal(gateway.Options.DefaultModel, worker.Options.DefaultModel);
        // Artifacts a worker writes are the ones gateways serve: the same path on the same claim.
        var (gatewayPod, workerPod) = (manifests.Single<V1Deployment>("gateway").Spec.Template.Spec, manifests.Single<V1Deployment>("worker").Spec.Template.Spec);
        Assert.Equal(Json(gatewayPod, "Gateway", "ArtifactsPath"), Json(workerPod, "Worker", "ArtifactsPath"));
        Assert.Equal(ClaimOf(gatewayPod, Json(gatewayPod, "Gateway", "ArtifactsPath")), ClaimOf(workerPod, Json(workerPod, "Worker", "ArtifactsPath")));

        string Json(V1PodSpec pod, string section, string key) =>
            System.Text.Json.Nodes.JsonNode.Parse(Services.AppSettings(manifests, pod, pod.Containers.Single()))![section]![key]!.GetValue<string>();
        static string ClaimOf(V1PodSpec pod, string path)
        {
            var mount = pod.Containers.Single().VolumeMounts.Where(m => path.StartsWith(m.MountPath + "/", StringComparison.Ordinal)).MaxBy(m => m.MountPath.Length)!;
            return pod.Volumes.Single(v => v.Name == mount.Name).PersistentVolumeClaim.ClaimName;
        }
    }

    [Fact]
    public void A_worker_setting_the_options_lack_or_a_path_off_its_volumes_is_rejected()
    {
        var manifests = Rendered.Of("base");
        var template = manifests.Single<V1Deployment>("worker").Spec.Template;
        string json = Services.AppSettings(manifests, template.Spec, template.Spec.Containers.Single());
        Services.Worker(manifests, template, json);
        var e = Assert.ThrowsAny<InvalidOperationException>(() => Services.Worker(manifests, template, json.Replace("\"MaxConcurrentJobs\"", "\"MaxConcurentJobs\"", StringComparison.Ordinal)));
        Assert.Contains("MaxConcurentJobs", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<InvalidOperationException>(() => Services.Worker(manifests, template, json.Replace("/var/lib/interpmesh/data/artifacts", "/var/lib/interpmesh/plugins/artifacts", StringComparison.Ordinal)));
        Assert.Contains("read-only volume", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<InvalidOperationException>(() => Services.Worker(manifests, template, json.Replace("\"MaxConcurrentJobs\": 2", "\"MaxConcurrentJobs\": 0", StringComparison.Ordinal)));
        Assert.Contains("Worker:MaxConcurrentJobs", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_key_the_options_do_not_have_is_rejected()
    {
        var manifests = Rendered.Of("base");
        var template = manifests.Single<V1Deployment>("gateway").Spec.Template;
        string json = Services.AppSettings(manifests, template.Spec, template.Spec.Containers.Single());
        Services.Gateway(manifests, template, json);
        var e = Assert.ThrowsAny<InvalidOperationException>(() => Services.Gateway(manifests, template, json.Replace("\"MaxQueuedJobs\"", "\"MaxQueueJobs\"", StringComparison.Ordinal)));
        Assert.Contains("MaxQueueJobs", e.Message, StringComparison.Ordinal);
        Assert.ThrowsAny<InvalidOperationException>(() => Services.Gateway(manifests, template, json.Replace("\"Logging\"", "\"Loging\"", StringComparison.Ordinal)));
    }

    [Fact]
    public void A_value_the_service_would_refuse_at_start_is_rejected()
    {
        var manifests = Rendered.Of("base");
        var template = manifests.Single<V1Deployment>("model-stories260k").Spec.Template;
        string json = Services.AppSettings(manifests, template.Spec, template.Spec.Containers.Single());
        var e = Assert.Throws<InvalidOperationException>(() => Services.ModelService(manifests, template, json.Replace("\"Device\": \"cpu\"", "\"Device\": \"gpu\"", StringComparison.Ordinal)));
        Assert.Contains("ModelService:Device", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<InvalidOperationException>(() => Services.ModelService(manifests, template, json.Replace("0.0.0.0:50051", "127.0.0.1:50051", StringComparison.Ordinal)));
        Assert.Contains("all interfaces", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Paths_must_be_on_the_right_volumes()
    {
        var manifests = Rendered.Of("base");
        var template = manifests.Single<V1Deployment>("gateway").Spec.Template;
        string json = Services.AppSettings(manifests, template.Spec, template.Spec.Containers.Single());
        var e = Assert.Throws<InvalidOperationException>(() => Services.Gateway(manifests, template, json.Replace("/var/lib/interpmesh/data/artifacts", "/srv/artifacts", StringComparison.Ordinal)));
        Assert.Contains("read-only", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<InvalidOperationException>(() => Services.Gateway(manifests, template, json.Replace("/var/lib/interpmesh/data/artifacts", "/etc/interpmesh/keys/artifacts", StringComparison.Ordinal)));
        Assert.Contains("read-only volume", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<InvalidOperationException>(() => Services.Gateway(manifests, template, json.Replace("/etc/interpmesh/keys/keys.json", "/etc/interpmesh/keys/other.json", StringComparison.Ordinal)));
        Assert.Contains("KeysFile", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void The_shipped_api_keys_are_valid_entries(string kustomization)
    {
        var secret = Rendered.Of(kustomization).Single<V1Secret>("interpmesh-api-keys");
        var entries = JsonSerializer.Deserialize<List<ApiKeyEntry>>(secret.StringData["keys.json"], new JsonSerializerOptions(JsonSerializerDefaults.Web));
        Assert.NotNull(entries);
        Assert.Empty(entries.SelectMany((k, i) => GatewayOptionsValidator.ApiKeyEntryErrors(k, $"keys.json[{i}]")));
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Gateways_and_workers_take_the_job_store_connection_string_from_the_database_secret(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        foreach (var (deployment, variable) in new[] { ("gateway", "Gateway__Jobs__ConnectionString"), ("worker", "Worker__Jobs__ConnectionString") })
        {
            var container = manifests.Single<V1Deployment>(deployment).Spec.Template.Spec.Containers.Single();
            var env = Assert.Single(container.Env, e => e.Name == variable);
            Assert.Null(env.Value);
            var secret = env.ValueFrom?.SecretKeyRef;
            Assert.True(secret is not null, $"{deployment}: the connection string must come from a Secret, never a literal in the manifests");
            Assert.Equal("interpmesh-db", secret.Name);
            Assert.Equal("connection-string", secret.Key);
            // Required: gateways and workers in separate pods meet only in the shared store; a pod
            // without it would keep jobs no other pod sees (docs/deploy.md, "Job store").
            Assert.True(secret.Optional is null or false, $"{deployment}: the database Secret must be required");
        }
    }
}
