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
        foreach (var deployment in manifests.ModelServices())
        {
            var model = Services.ModelService(manifests, deployment);
            Assert.Equal(50051, model.GrpcPort);
            Assert.Equal(9464, model.MetricsPort);
        }
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
        e = Assert.Throws<InvalidOperationException>(() => Services.Gateway(manifests, template, json.Replace("/var/lib/interpmesh/data/artifacts", "/var/lib/interpmesh/plugins/artifacts", StringComparison.Ordinal)));
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
