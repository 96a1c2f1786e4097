using System.Collections.Concurrent;
using System.Diagnostics;
using k8s;
using k8s.Models;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// deploy/k8s rendered by <c>kubectl kustomize</c> (kubectl's built-in kustomize) and read back
/// into the typed Kubernetes object models, strictly: an unknown field, a misspelt one or a value
/// of the wrong type is an error, as it is for the API server.
/// </summary>
internal static class Rendered
{
    /// <summary>Every kustomization a team can apply, relative to deploy/k8s.</summary>
    public static readonly string[] Kustomizations = ["base", "overlays/cpu", "overlays/gpu", "overlays/dev"];

    public static readonly TheoryData<string> All = new(Kustomizations);

    private static readonly ConcurrentDictionary<string, Manifests> Cache = new(StringComparer.Ordinal);

    public static string K8sDir => Path.Combine(RepoPaths.Root, "deploy", "k8s");

    public static Manifests Of(string kustomization) => Cache.GetOrAdd(kustomization, k => Manifests.Parse(k, Kustomize(Path.Combine(K8sDir, k))));

    /// <summary>Runs <c>kubectl kustomize DIR</c>; fails loudly when kubectl is missing.</summary>
    public static string Kustomize(string dir)
    {
        string kubectl = FindKubectl()
            ?? throw new InvalidOperationException(
                "kubectl is not installed, and the deploy tests render deploy/k8s with `kubectl kustomize`. " +
                "Install it: `apt-get update && apt-get install -y kubernetes-client` (Debian), or the `kubectl` package. .ci/run does this itself.");
        var psi = new ProcessStartInfo(kubectl) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("kustomize");
        psi.ArgumentList.Add(dir);
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"`kubectl kustomize {dir}` failed ({process.ExitCode}): {stderr.Result}");
        return stdout;
    }

    private static string? FindKubectl()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Append("/usr/bin").Append("/usr/local/bin"))
        {
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, "kubectl")))
                return Path.Combine(dir, "kubectl");
        }
        return null;
    }
}

/// <summary>The objects of one rendered kustomization, typed.</summary>
internal sealed class Manifests(string name, IReadOnlyList<object> objects)
{
    public string Name { get; } = name;

    public IReadOnlyList<object> Objects { get; } = objects;

    public static Manifests Parse(string name, string yaml) => new(name, KubernetesYaml.LoadAllFromString(yaml, typeMap: null, strict: true));

    public IEnumerable<T> OfType<T>() => Objects.OfType<T>();

    public T Single<T>(string objectName) where T : IMetadata<V1ObjectMeta> =>
        Objects.OfType<T>().SingleOrDefault(o => o.Metadata.Name == objectName)
        ?? throw new InvalidOperationException($"{Name}: no {typeof(T).Name} named '{objectName}' (have: {string.Join(", ", Objects.OfType<T>().Select(o => o.Metadata.Name))})");

    /// <summary>Every workload's pod template, named by kind/name.</summary>
    public IEnumerable<(string Workload, V1PodTemplateSpec Template)> PodTemplates() =>
        Objects.OfType<V1Deployment>().Select(d => ($"Deployment/{d.Metadata.Name}", d.Spec.Template))
            .Concat(Objects.OfType<V1StatefulSet>().Select(s => ($"StatefulSet/{s.Metadata.Name}", s.Spec.Template)));

    /// <summary>
    /// The pod templates of InterpMesh's own services (gateway, worker, model services): the ones
    /// that serve gRPC health, read appsettings.json and drain streams. Not the dev database.
    /// </summary>
    public IEnumerable<(string Workload, V1PodTemplateSpec Template)> ServiceTemplates() =>
        PodTemplates().Where(t => Component(t.Template) is "gateway" or "worker" or "model-service");

    /// <summary>The <c>app.kubernetes.io/component</c> label of a pod template.</summary>
    public static string? Component(V1PodTemplateSpec template) =>
        template.Metadata.Labels?.TryGetValue("app.kubernetes.io/component", out var c) == true ? c : null;

    /// <summary>
    /// The model-service Deployments (pods labelled <c>app.kubernetes.io/component: model-service</c>);
    /// never none, so a check over them cannot pass by having nothing to check.
    /// </summary>
    public IReadOnlyList<V1Deployment> ModelServices()
    {
        var all = Objects.OfType<V1Deployment>()
            .Where(d => d.Spec.Template.Metadata.Labels?.TryGetValue("app.kubernetes.io/component", out var c) == true && c == "model-service")
            .ToList();
        return all.Count > 0 ? all : throw new InvalidOperationException($"{Name}: no model-service Deployment");
    }

    public V1ConfigMap ConfigMapOfVolume(V1PodSpec pod, string volumeName)
    {
        var volume = pod.Volumes.Single(v => v.Name == volumeName);
        return Single<V1ConfigMap>(volume.ConfigMap?.Name ?? throw new InvalidOperationException($"volume '{volumeName}' is not a ConfigMap"));
    }
}
