using System.Collections.Concurrent;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Temporary folders removed when the test process exits. A plugins folder holds the plugins'
/// native dependencies (~370 MB), so folders left behind by every run filled the disk.
/// </summary>
public static class TempFolders
{
    private static readonly ConcurrentBag<string> Created = [];

    static TempFolders() => AppDomain.CurrentDomain.ProcessExit += (_, _) => DeleteAll();

    /// <summary>A new folder under the system's temporary folder, named <paramref name="prefix"/> and a GUID.</summary>
    public static string Create(string prefix)
    {
        string path = Path.Combine(Path.GetTempPath(), prefix + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        Created.Add(path);
        return path;
    }

    /// <summary>Deletes folders from <see cref="Create"/> now (a test's <c>finally</c>), rather than at exit.</summary>
    public static void Delete(params string[] paths)
    {
        foreach (var path in paths)
        {
            if (Directory.Exists(path))
                Directory.Delete(path, recursive: true);
        }
    }

    private static void DeleteAll()
    {
        foreach (var path in Created)
        {
            try
            {
                Directory.Delete(path, recursive: true);
            }
            catch (IOException)
            {
                // Best effort at exit: a folder still in use stays behind.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }
}
