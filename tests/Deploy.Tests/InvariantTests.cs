using System.Text.Json.Nodes;
using k8s.Models;

namespace InterpMesh.Deploy.Tests;

/// <summary>What the services and the cluster rely on, checked on every rendered kustomization.</summary>
public sealed class InvariantTests
{
    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Every_container_has_grpc_probes_resources_and_a_locked_down_security_context(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        // Every pod (the dev database too) is locked down; InterpMesh's services also probe over gRPC.
        foreach (var (workload, template) in manifests.PodTemplates())
        {
            var pod = template.Spec;
            Assert.True(pod.SecurityContext?.RunAsNonRoot == true, $"{workload}: pod securityContext.runAsNonRoot");
            Assert.True(pod.SecurityContext?.RunAsUser is > 0, $"{workload}: pod securityContext.runAsUser must be a non-zero uid");
            Assert.Equal("RuntimeDefault", pod.SecurityContext?.SeccompProfile?.Type);
            Assert.False(pod.AutomountServiceAccountToken ?? true, $"{workload}: no pod here talks to the API server; do not mount a token");
            foreach (var c in (pod.InitContainers ?? []).Concat(pod.Containers))
            {
                string where = $"{workload}/{c.Name}";
                var sc = c.SecurityContext;
                Assert.True(sc is not null, $"{where}: no securityContext");
                Assert.True(sc.AllowPrivilegeEscalation == false, $"{where}: allowPrivilegeEscalation must be false");
                Assert.True(sc.ReadOnlyRootFilesystem == true, $"{where}: readOnlyRootFilesystem must be true");
                Assert.True(sc.RunAsNonRoot == true, $"{where}: runAsNonRoot must be true");
                Assert.Equal(["ALL"], sc.Capabilities?.Drop ?? []);
                Assert.Null(sc.Capabilities?.Add);
                Assert.True(sc.Privileged is null or false, $"{where}: privileged");
                Assert.True(c.Resources?.Requests?.ContainsKey("cpu") == true && c.Resources.Requests.ContainsKey("memory"), $"{where}: needs cpu and memory requests");
                Assert.True(c.Resources.Limits?.ContainsKey("memory") == true, $"{where}: needs a memory limit");
                Assert.DoesNotContain(":latest", c.Image, StringComparison.Ordinal);
                Assert.Contains(":", c.Image, StringComparison.Ordinal);
            }
            if (Manifests.Component(template) is not ("gateway" or "worker" or "model-service"))
            {
                // Not one of ours (the dev database): probed some other way, but probed.
                Assert.All(pod.Containers, c => Assert.True(c.ReadinessProbe is not null && c.LivenessProbe is not null, $"{workload}/{c.Name}: needs readiness and liveness probes"));
                continue;
            }
            foreach (var c in pod.Containers)
            {
                string where = $"{workload}/{c.Name}";
                int grpcPort = Port(c, "grpc");
                foreach (var (kind, probe) in new[] { ("startupProbe", c.StartupProbe), ("readinessProbe", c.ReadinessProbe), ("livenessProbe", c.LivenessProbe) })
                {
                    Assert.True(probe?.Grpc is not null, $"{where}: {kind} must use the gRPC health service (grpc:)");
                    Assert.Equal(grpcPort, probe.Grpc.Port);
                }
                Assert.NotNull(c.Lifecycle?.PreStop);
                // /tmp is the only writable place outside the volumes (read-only root filesystem).
                Assert.Contains(c.VolumeMounts, m => m.MountPath == "/tmp" && pod.Volumes.Single(v => v.Name == m.Name).EmptyDir is not null);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Services_select_their_pods_and_target_named_container_ports(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        foreach (var service in manifests.OfType<V1Service>())
        {
            var (workload, template) = manifests.PodTemplates().SingleOrDefault(t => Selects(service.Spec.Selector, t.Template.Metadata.Labels));
            Assert.True(template is not null, $"Service/{service.Metadata.Name} selects no workload's pods");
            var container = template.Spec.Containers.Single();
            foreach (var port in service.Spec.Ports)
            {
                Assert.Equal(port.Name, port.TargetPort?.Value);
                Assert.Equal(port.Port, Port(container, port.Name));
            }
            if (Manifests.Component(template) == "database")
                continue;
            // Prometheus scrapes the pod's metrics port, the one Kestrel serves /metrics on.
            var annotations = template.Metadata.Annotations;
            Assert.Equal("true", annotations["prometheus.io/scrape"]);
            Assert.Equal("/metrics", annotations["prometheus.io/path"]);
            Assert.Equal(Port(container, "metrics").ToString(System.Globalization.CultureInfo.InvariantCulture), annotations["prometheus.io/port"]);
            _ = workload;
        }
    }

    /// <summary>
    /// Every gateway model endpoint is <c>dns:///&lt;service&gt;.&lt;namespace&gt;.svc.cluster.local:&lt;port&gt;</c>:
    /// a headless Service (clusterIP None, not-ready pods unlisted) in the gateway's namespace that
    /// selects the pods of that model's model-service Deployment, on the port that reaches the
    /// container's gRPC port. Replicas are not listed, so scaling changes no gateway configuration.
    /// Every model-service Deployment is reached by some endpoint, and its pods keep serving (preStop)
    /// until the gateway has resolved the name again.
    /// </summary>
    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Gateway_endpoints_resolve_each_model_through_the_headless_service_of_its_deployment(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var gateway = Services.Gateway(manifests);
        string ns = manifests.Single<V1Deployment>("gateway").Metadata.NamespaceProperty;
        Assert.False(string.IsNullOrEmpty(ns));
        Assert.NotEmpty(gateway.Options.Models);
        var reached = new HashSet<string>();
        foreach (var (model, route) in gateway.Options.Models)
        {
            Assert.NotEmpty(route.Endpoints);
            foreach (var endpoint in route.Endpoints)
            {
                var m = System.Text.RegularExpressions.Regex.Match(endpoint, @"^dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:([0-9]+)$");
                Assert.True(m.Success, $"{model}: endpoint '{endpoint}' is not dns:///<service>.<namespace>.svc.cluster.local:<port>");
                var (serviceName, serviceNamespace) = (m.Groups[1].Value, m.Groups[2].Value);
                int port = int.Parse(m.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture);
                Assert.Equal(ns, serviceNamespace);

                var service = manifests.Single<V1Service>(serviceName);
                Assert.Equal(ns, service.Metadata.NamespaceProperty);
                Assert.True(service.Spec.ClusterIP == "None", $"Service/{serviceName} must be headless (clusterIP: None) for its name to resolve to every pod");
                Assert.True(service.Spec.PublishNotReadyAddresses != true, $"Service/{serviceName} must not list pods that are not ready");

                var deployments = manifests.ModelServices().Where(d => Selects(service.Spec.Selector, d.Spec.Template.Metadata.Labels)).ToList();
                var deployment = Assert.Single(deployments);
                Assert.Equal(ns, deployment.Metadata.NamespaceProperty);
                Assert.True(Selects(deployment.Spec.Selector.MatchLabels, deployment.Spec.Template.Metadata.Labels));
                Assert.Equal(model, deployment.Spec.Template.Metadata.Labels["interpmesh.dev/model"]);
                reached.Add(deployment.Metadata.Name);

                // The endpoint's port is a Service port that targets the container's gRPC port, which the service listens on.
                var servicePort = service.Spec.Ports.SingleOrDefault(p => p.Port == port);
                Assert.True(servicePort is not null, $"{model}: Service/{serviceName} has no port {port}");
                var container = deployment.Spec.Template.Spec.Containers.Single();
                int grpc = Port(container, "grpc");
                Assert.True(servicePort.TargetPort.Value == "grpc" || servicePort.TargetPort.Value == grpc.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    $"{model}: Service/{serviceName} port {port} targets '{servicePort.TargetPort.Value}', not the container's gRPC port");
                // A headless Service does no port mapping: clients connect to the pod on the port they resolved with.
                Assert.Equal(grpc, port);
                Assert.Equal(grpc, Services.ModelService(manifests, deployment).GrpcPort);

                var preStop = container.Lifecycle.PreStop.Exec.Command;
                Assert.True(int.Parse(preStop[1], System.Globalization.CultureInfo.InvariantCulture) >= InterpMesh.Client.Channels.DnsRefreshInterval.TotalSeconds,
                    $"Deployment/{deployment.Metadata.Name}: the preStop sleep must outlast the gateway's DNS refresh ({InterpMesh.Client.Channels.DnsRefreshInterval.TotalSeconds} s)");
            }
        }
        Assert.Equal(manifests.ModelServices().Select(d => d.Metadata.Name).Order(), reached.Order());
    }

    /// <summary>Only gateway and worker pods reach a model service's gRPC port; only Prometheus its metrics port.</summary>
    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void The_network_policy_admits_only_gateways_and_workers_to_model_services(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var callers = new[] { "gateway", "worker" }.Select(n => manifests.Single<V1Deployment>(n).Spec.Template.Metadata.Labels).ToList();
        foreach (var set in manifests.ModelServices())
        {
            var labels = set.Spec.Template.Metadata.Labels;
            var policies = manifests.OfType<V1NetworkPolicy>().Where(p => Selects(p.Spec.PodSelector.MatchLabels, labels)).ToList();
            Assert.NotEmpty(policies);
            int grpc = Port(set.Spec.Template.Spec.Containers.Single(), "grpc");
            int metrics = Port(set.Spec.Template.Spec.Containers.Single(), "metrics");
            foreach (var policy in policies)
            {
                Assert.Contains("Ingress", policy.Spec.PolicyTypes);
                foreach (var rule in policy.Spec.Ingress ?? [])
                {
                    Assert.True(rule.FromProperty is { Count: > 0 }, $"NetworkPolicy/{policy.Metadata.Name}: a rule without `from` admits everyone");
                    Assert.True(rule.Ports is { Count: > 0 }, $"NetworkPolicy/{policy.Metadata.Name}: a rule without ports opens every port");
                    var ports = rule.Ports.Select(p => int.Parse(p.Port.Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
                    foreach (var peer in rule.FromProperty)
                    {
                        Assert.Null(peer.IpBlock);
                        if (ports.Contains(grpc))
                        {
                            // Gateways or workers, in this namespace (no namespaceSelector), and nothing else.
                            Assert.Null(peer.NamespaceSelector);
                            Assert.True(peer.PodSelector is not null && callers.Any(c => Selects(peer.PodSelector.MatchLabels, c))
                                && !Selects(peer.PodSelector.MatchLabels, labels), $"NetworkPolicy/{policy.Metadata.Name}: the gRPC port admits more than gateways and workers");
                        }
                        else
                        {
                            Assert.Equal([metrics], ports);
                            Assert.Equal("monitoring", peer.NamespaceSelector?.MatchLabels?["kubernetes.io/metadata.name"]);
                        }
                    }
                }
                Assert.Contains(policy.Spec.Ingress ?? [], r => r.Ports.Any(p => p.Port.Value == grpc.ToString(System.Globalization.CultureInfo.InvariantCulture)));
                // Both callers are admitted: workers run plugins that call the model directly.
                foreach (var caller in callers)
                    Assert.Contains(policy.Spec.Ingress ?? [], r => r.FromProperty.Any(p => p.PodSelector is not null && Selects(p.PodSelector.MatchLabels, caller)));
            }
        }
    }

    [Fact]
    public void The_gpu_overlay_requests_gpus_on_gpu_nodes_with_the_cuda_image_and_the_cpu_overlay_does_not()
    {
        var gpu = Rendered.Of("overlays/gpu");
        foreach (var set in gpu.ModelServices())
        {
            var pod = set.Spec.Template.Spec;
            var c = pod.Containers.Single();
            Assert.Equal("1", c.Resources.Limits["nvidia.com/gpu"].ToString());
            Assert.Equal("true", pod.NodeSelector["nvidia.com/gpu.present"]);
            Assert.Contains(pod.Tolerations, t => t.Key == "nvidia.com/gpu" && t.Effect == "NoSchedule");
            Assert.EndsWith("-cuda", c.Image, StringComparison.Ordinal);
            Assert.Equal("cuda", Services.ModelService(gpu, set).Options.Device);
            Assert.True(c.Resources.Limits["memory"].ToDecimal() > Rendered.Of("overlays/cpu").Single<V1Deployment>(set.Metadata.Name).Spec.Template.Spec.Containers.Single().Resources.Limits["memory"].ToDecimal());
        }
        foreach (var kustomization in new[] { "base", "overlays/cpu" })
        {
            foreach (var set in Rendered.Of(kustomization).ModelServices())
            {
                var c = set.Spec.Template.Spec.Containers.Single();
                Assert.False(c.Resources.Limits.ContainsKey("nvidia.com/gpu"));
                Assert.EndsWith("-cpu", c.Image, StringComparison.Ordinal);
                Assert.Equal("cpu", Services.ModelService(Rendered.Of(kustomization), set).Options.Device);
            }
        }
        // Gateways and workers (plugins run on CPU) never ask for a GPU.
        Assert.False(gpu.Single<V1Deployment>("gateway").Spec.Template.Spec.Containers.Single().Resources.Limits.ContainsKey("nvidia.com/gpu"));
        Assert.False(gpu.Single<V1Deployment>("worker").Spec.Template.Spec.Containers.Single().Resources.Limits.ContainsKey("nvidia.com/gpu"));
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void The_gateway_scales_horizontally_without_losing_availability(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        var deployment = manifests.Single<V1Deployment>("gateway");
        var hpa = manifests.Single<V2HorizontalPodAutoscaler>("gateway");
        Assert.Equal(("Deployment", "gateway"), (hpa.Spec.ScaleTargetRef.Kind, hpa.Spec.ScaleTargetRef.Name));
        Assert.True(hpa.Spec.MinReplicas >= 2 && hpa.Spec.MaxReplicas > hpa.Spec.MinReplicas);
        var pdb = manifests.Single<V1PodDisruptionBudget>("gateway");
        Assert.True(Selects(pdb.Spec.Selector.MatchLabels, deployment.Spec.Template.Metadata.Labels));
        Assert.Equal("0", deployment.Spec.Strategy.RollingUpdate.MaxUnavailable.Value);
        foreach (var set in manifests.ModelServices())
            Assert.Contains(manifests.OfType<V1PodDisruptionBudget>(), p => Selects(p.Spec.Selector.MatchLabels, set.Spec.Template.Metadata.Labels));
        // Jobs and artifacts of all replicas live on one ReadWriteMany volume.
        var data = deployment.Spec.Template.Spec.Volumes.Single(v => v.Name == "data").PersistentVolumeClaim.ClaimName;
        Assert.Contains("ReadWriteMany", manifests.Single<V1PersistentVolumeClaim>(data).Spec.AccessModes);
    }

    /// <summary>A pod is given terminationGracePeriodSeconds in all: the preStop sleep, then Kestrel's drain of in-flight calls.</summary>
    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Shutdown_leaves_time_to_drain_streams(string kustomization)
    {
        var manifests = Rendered.Of(kustomization);
        foreach (var (workload, template) in manifests.ServiceTemplates())
        {
            var c = template.Spec.Containers.Single();
            var command = c.Lifecycle.PreStop.Exec.Command;
            Assert.Equal("sleep", command[0]);
            int preStop = int.Parse(command[1], System.Globalization.CultureInfo.InvariantCulture);
            var shutdown = Services.HostShutdownTimeout(manifests, template);
            // The key in appsettings reaches the host (a misspelt one would leave the 30 s default).
            var configured = JsonNode.Parse(Services.AppSettings(manifests, template.Spec, c))!["shutdownTimeoutSeconds"]!.GetValue<int>();
            Assert.Equal(TimeSpan.FromSeconds(configured), shutdown);
            Assert.True(shutdown >= TimeSpan.FromSeconds(30), $"{workload}: shutdownTimeoutSeconds {shutdown} leaves little time to drain streams");
            Assert.True(template.Spec.TerminationGracePeriodSeconds >= preStop + shutdown.TotalSeconds + 5,
                $"{workload}: terminationGracePeriodSeconds {template.Spec.TerminationGracePeriodSeconds} < preStop {preStop} s + shutdown {shutdown.TotalSeconds} s + 5 s");
        }
    }

    [Theory]
    [MemberData(nameof(Rendered.All), MemberType = typeof(Rendered))]
    public void Model_services_allow_a_long_startup_for_model_loading(string kustomization)
    {
        foreach (var set in Rendered.Of(kustomization).ModelServices())
        {
            var probe = set.Spec.Template.Spec.Containers.Single().StartupProbe;
            Assert.True((probe.PeriodSeconds ?? 10) * (probe.FailureThreshold ?? 3) >= 600, $"Deployment/{set.Metadata.Name}: the startup probe gives up before 10 minutes");
        }
    }

    internal static int Port(V1Container c, string name) =>
        c.Ports?.SingleOrDefault(p => p.Name == name)?.ContainerPort
        ?? throw new InvalidOperationException($"container {c.Name} has no port named '{name}'");

    internal static bool Selects(IDictionary<string, string>? selector, IDictionary<string, string>? labels) =>
        selector is { Count: > 0 } && labels is not null && selector.All(kv => labels.TryGetValue(kv.Key, out var v) && v == kv.Value);
}
