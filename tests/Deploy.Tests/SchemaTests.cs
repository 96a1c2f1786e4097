using k8s;
using k8s.Models;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// The rendered manifests against the Kubernetes object schemas: KubernetesClient's models are
/// generated from the API server's OpenAPI document, and strict reading rejects any field the
/// schema does not have and any value of the wrong type. A kind the models do not know (a CRD, or
/// a misspelt kind/apiVersion) is rejected too.
/// </summary>
public sealed class SchemaTests
{
    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Every_kustomization_builds_and_every_object_matches_its_schema(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        Assert.NotEmpty(manifests.Objects);
        foreach (var o in manifests.Objects)
        {
            var typed = Assert.IsAssignableFrom<IKubernetesObject<V1ObjectMeta>>(o);
            Assert.False(string.IsNullOrEmpty(typed.Metadata?.Name), $"{kustomization}: a {typed.Kind} without a name");
            if (typed is not V1Namespace)
                Assert.Equal("interpmesh", typed.Metadata!.NamespaceProperty);
        }
        // What a team expects to find, by kind.
        foreach (var kind in new[] { "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim", "NetworkPolicy" })
            Assert.Contains(manifests.Objects, o => ((IKubernetesObject)o).Kind == kind);
    }

    [Fact]
    public void A_misspelt_field_is_rejected()
    {
        const string yaml = """
            apiVersion: apps/v1
            kind: Deployment
            metadata: { name: x }
            spec:
              replicas: 1
              selector: { matchLabels: { a: b } }
              template:
                metadata: { labels: { a: b } }
                spec:
                  containers:
                  - name: x
                    image: x:1
                    readinessProbe: { grpcc: { port: 50051 } }
            """;
        Assert.ThrowsAny<Exception>(() => Manifests.Parse("broken", yaml));
        // The same document with the field spelt right reads.
        Assert.Single(Manifests.Parse("fixed", yaml.Replace("grpcc", "grpc", StringComparison.Ordinal)).Objects);
    }

    [Fact]
    public void A_value_of_the_wrong_type_is_rejected()
    {
        const string yaml = """
            apiVersion: v1
            kind: Service
            metadata: { name: x }
            spec:
              ports:
              - name: grpc
                port: fifty
            """;
        Assert.ThrowsAny<Exception>(() => Manifests.Parse("broken", yaml));
    }

    [Fact]
    public void An_unknown_kind_is_rejected()
    {
        const string yaml = """
            apiVersion: apps/v1
            kind: Deploymnet
            metadata: { name: x }
            """;
        Assert.ThrowsAny<Exception>(() => Manifests.Parse("broken", yaml));
    }
}
