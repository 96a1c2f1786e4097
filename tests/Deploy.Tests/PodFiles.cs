using System.Text;
using k8s.Models;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// The files a container sees on its volumes, laid out under a scratch folder so that the services'
/// validators (which check that files exist) can run on the pod's paths. A path that is not on a
/// volume is an error: the root filesystem is read-only and holds only the image.
/// </summary>
internal sealed class PodFiles(Manifests manifests, V1PodSpec pod, V1Container container)
{
    public enum Need { Folder, WritableFolder, SecretFile, VolumeFile }

    private readonly string root = Directory.CreateTempSubdirectory("interpmesh-pod-").FullName;

    /// <summary>Where <paramref name="path"/> is in the scratch layout, after checking what it is on.</summary>
    public string Locate(string path, string setting, Need need)
    {
        if (!Path.IsPathRooted(path))
            throw new InvalidOperationException($"{setting} '{path}' is relative: in a pod it would land in the read-only /app");
        var mount = container.VolumeMounts
            .Where(m => path == m.MountPath || path.StartsWith(m.MountPath.TrimEnd('/') + "/", StringComparison.Ordinal))
            .MaxBy(m => m.MountPath.Length)
            ?? throw new InvalidOperationException($"{setting} '{path}' is on no volume of container {container.Name}; the root filesystem is read-only");
        var volume = pod.Volumes.Single(v => v.Name == mount.Name);
        string local = root + path;
        string mountDir = root + mount.MountPath;
        switch (need)
        {
            case Need.WritableFolder when mount.ReadOnlyProperty == true || volume.PersistentVolumeClaim?.ReadOnlyProperty == true:
                throw new InvalidOperationException($"{setting} '{path}' is on read-only volume '{mount.Name}'");
            case Need.WritableFolder when volume.PersistentVolumeClaim is null:
                throw new InvalidOperationException($"{setting} '{path}' must be on a persistent volume, not on '{mount.Name}'");
            case Need.SecretFile when volume.Secret is null:
                throw new InvalidOperationException($"{setting} '{path}' must come from a Secret, not from volume '{mount.Name}'");
            case Need.SecretFile when mount.SubPath is { Length: > 0 }:
                throw new InvalidOperationException($"{setting}: Secret '{volume.Secret.SecretName}' is mounted with subPath, so the kubelet never updates it and rotated keys never arrive");
            case Need.SecretFile:
                var secret = manifests.Single<V1Secret>(volume.Secret.SecretName);
                Directory.CreateDirectory(mountDir);
                foreach (var (key, value) in secret.StringData ?? new Dictionary<string, string>())
                    File.WriteAllText(Path.Combine(mountDir, key), value);
                foreach (var (key, value) in secret.Data ?? new Dictionary<string, byte[]>())
                    File.WriteAllBytes(Path.Combine(mountDir, key), value);
                break;
            case Need.VolumeFile when volume.PersistentVolumeClaim is null:
                throw new InvalidOperationException($"{setting} '{path}' must be on a persistent volume, not on '{mount.Name}'");
            case Need.VolumeFile:
                Directory.CreateDirectory(Path.GetDirectoryName(local)!);
                File.WriteAllText(local, "placeholder for the file an operator copies onto the volume", Encoding.UTF8);
                break;
            default:
                Directory.CreateDirectory(local);
                break;
        }
        return local;
    }
}
