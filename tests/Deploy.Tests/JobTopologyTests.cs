using k8s.Models;
using Npgsql;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// Gateways are stateless front doors, workers run the plugins, and both meet in the job store
/// (PostgreSQL): what the manifests must say for that to hold through scaling and rollouts.
/// </summary>
public sealed class JobTopologyTests
{
    /// <summary>The Prometheus name of the store-wide queue-depth gauge the worker HPA scales on.</summary>
    public const string QueueMetric = "interpmesh_jobs_queued";

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Workers_scale_on_the_job_queue_and_roll_without_losing_capacity(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var worker = manifests.Single<V1Deployment>("worker");
        var hpa = manifests.Single<V2HorizontalPodAutoscaler>("worker");
        Assert.Equal(("Deployment", "worker"), (hpa.Spec.ScaleTargetRef.Kind, hpa.Spec.ScaleTargetRef.Name));
        Assert.True(hpa.Spec.MinReplicas >= 1 && hpa.Spec.MaxReplicas > hpa.Spec.MinReplicas);
        // Queued jobs use no CPU: scaling on CPU would never add a worker for a waiting queue.
        var metric = Assert.Single(hpa.Spec.Metrics);
        Assert.Equal("External", metric.Type);
        Assert.Equal(QueueMetric, metric.External.Metric.Name);
        // The gauge the workers export under that name (OpenTelemetry's Prometheus exporter writes dots as underscores).
        Assert.Equal(QueueMetric, InterpMesh.AnalysisWorker.Telemetry.WorkerMetrics.QueuedGauge.Replace('.', '_'));
        Assert.Equal("AverageValue", metric.External.Target.Type);
        Assert.True(metric.External.Target.AverageValue.ToDecimal() >= 1);
        // Slow scale-down: a removed worker's jobs resume from their last checkpoint, redoing work.
        Assert.True(hpa.Spec.Behavior.ScaleDown.StabilizationWindowSeconds >= 300);
        var pdb = manifests.Single<V1PodDisruptionBudget>("worker");
        Assert.True(InvariantTests.Selects(pdb.Spec.Selector.MatchLabels, worker.Spec.Template.Metadata.Labels));
        Assert.Equal("0", worker.Spec.Strategy.RollingUpdate.MaxUnavailable.Value);
        // Workers write artifacts where gateways serve them: the same ReadWriteMany claim.
        string Claim(V1Deployment d) => d.Spec.Template.Spec.Volumes.Single(v => v.Name == "data").PersistentVolumeClaim.ClaimName;
        Assert.Equal(Claim(manifests.Single<V1Deployment>("gateway")), Claim(worker));
        Assert.Contains("ReadWriteMany", manifests.Single<V1PersistentVolumeClaim>(Claim(worker)).Spec.AccessModes);
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Plugins_are_installed_in_workers_and_gateways_carry_none(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var worker = manifests.Single<V1Deployment>("worker").Spec.Template.Spec;
        var init = Assert.Single(worker.InitContainers);
        Assert.StartsWith("interpmesh/worker:", init.Image, StringComparison.Ordinal);
        Assert.Contains(worker.Volumes, v => v.PersistentVolumeClaim?.ClaimName == "interpmesh-plugins");
        Assert.Contains(worker.Containers.Single().VolumeMounts, m => m.MountPath == "/var/lib/interpmesh/plugins" && m.ReadOnlyProperty == true);
        var gateway = manifests.Single<V1Deployment>("gateway").Spec.Template.Spec;
        Assert.True(gateway.InitContainers is null or { Count: 0 }, "the gateway runs no plugins and needs no plugin init container");
        Assert.DoesNotContain(gateway.Volumes, v => v.Name.Contains("plugins", StringComparison.Ordinal));
        // Nothing calls a worker: its only ingress is Prometheus on the metrics port.
        var policy = manifests.Single<V1NetworkPolicy>("worker");
        Assert.True(InvariantTests.Selects(policy.Spec.PodSelector.MatchLabels, manifests.Single<V1Deployment>("worker").Spec.Template.Metadata.Labels));
        int metrics = InvariantTests.Port(worker.Containers.Single(), "metrics");
        var rule = Assert.Single(policy.Spec.Ingress);
        Assert.Equal([metrics.ToString(System.Globalization.CultureInfo.InvariantCulture)], rule.Ports.Select(p => p.Port.Value));
        Assert.Equal("monitoring", Assert.Single(rule.FromProperty).NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]);
    }

    [Fact]
    public void The_dev_overlay_brings_a_database_that_only_gateways_and_workers_reach()
    {
        var dev = Rendered.Of("overlays/dev");
        var postgres = dev.Single<V1StatefulSet>("postgres");
        var service = dev.Single<V1Service>("postgres");
        var secret = dev.Single<V1Secret>("interpmesh-db");
        // The Secret's connection string names the Service, in this namespace, on its port.
        var cs = new NpgsqlConnectionStringBuilder(secret.StringData["connection-string"]);
        Assert.Equal($"postgres.{postgres.Metadata.NamespaceProperty}.svc.cluster.local", cs.Host);
        Assert.Equal(service.Spec.Ports.Single().Port, cs.Port);
        var container = postgres.Spec.Template.Spec.Containers.Single();
        Assert.Equal(cs.Database, container.Env.Single(e => e.Name == "POSTGRES_DB").Value);
        Assert.Equal(cs.Username, container.Env.Single(e => e.Name == "POSTGRES_USER").Value);
        Assert.Null(cs.Password);
        // Its data outlives the pod; its data directory is on that volume (the root is read-only).
        var claim = Assert.Single(postgres.Spec.VolumeClaimTemplates);
        var mount = container.VolumeMounts.Single(m => m.Name == claim.Metadata.Name);
        Assert.StartsWith(mount.MountPath + "/", container.Env.Single(e => e.Name == "PGDATA").Value, StringComparison.Ordinal);
        // It trusts whoever connects, so its policy must admit gateways and workers and nobody else.
        var policy = dev.OfType<V1NetworkPolicy>().Single(p => InvariantTests.Selects(p.Spec.PodSelector.MatchLabels, postgres.Spec.Template.Metadata.Labels));
        var allowed = new[] { "gateway", "worker" }.Select(n => dev.Single<V1Deployment>(n).Spec.Template.Metadata.Labels).ToList();
        var rule = Assert.Single(policy.Spec.Ingress);
        Assert.Equal(2, rule.FromProperty.Count);
        Assert.All(rule.FromProperty, p => Assert.True(p.NamespaceSelector is null && p.IpBlock is null && allowed.Any(a => InvariantTests.Selects(p.PodSelector.MatchLabels, a))));
        Assert.All(allowed, a => Assert.Contains(rule.FromProperty, p => InvariantTests.Selects(p.PodSelector.MatchLabels, a)));
        Assert.Equal(["5432"], rule.Ports.Select(p => p.Port.Value));
    }

    [Theory]
    [InlineData("base")]
    [InlineData("overlays/cpu")]
    [InlineData("overlays/gpu")]
    public void Production_kustomizations_bring_no_database_and_no_connection_string(string kustomization)
    {
        // A production database is managed, and its credentials never live in the repository.
        var manifests = Rendered.Of(kustomization);
        Assert.Empty(manifests.OfType<V1StatefulSet>());
        Assert.DoesNotContain(manifests.OfType<V1Secret>(), s => s.Metadata.Name == "interpmesh-db");
    }
}
