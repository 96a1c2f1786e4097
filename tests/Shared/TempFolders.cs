using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;

namespace InterpMesh.Tests;

/// <summary>
/// Temporary folders the tests remove. A plugins folder holds the plugins' native dependencies
/// (~370 MB), and folders left behind by every run once filled the disk. Each folder's name carries
/// the test process's id: they are removed when that process exits, and — because the test host
/// can be ended before its exit handlers run — the next test process removes any whose process is
/// gone.
/// </summary>
internal static partial class TempFolders
{
    private static readonly ConcurrentBag<string> Created = [];

    [GeneratedRegex(@"^interpmesh-[a-z-]+-p(\d+)-[0-9a-f]{32}$")]
    private static partial Regex Owned();

    static TempFolders()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Delete([.. Created]);
        SweepOrphans();
    }

    /// <summary>A new folder under the system's temporary folder, named <paramref name="prefix"/>, this process's id and a GUID.</summary>
    public static string Create(string prefix)
    {
        string path = Path.Combine(Path.GetTempPath(), $"{prefix}p{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        Created.Add(path);
        return path;
    }

    /// <summary>Deletes folders now (a test's <c>finally</c>, a fixture's dispose), best effort.</summary>
    public static void Delete(params string[] paths)
    {
        foreach (var path in paths)
        {
            try
            {
                if (Directory.Exists(path))
                    Directory.Delete(path, recursive: true);
            }
            catch (IOException)
            {
                // A folder still in use stays behind; the next run's sweep takes it.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }

    /// <summary>Removes folders of earlier test processes that have exited.</summary>
    private static void SweepOrphans()
    {
        foreach (var dir in Directory.EnumerateDirectories(Path.GetTempPath(), "interpmesh-*"))
        {
            var match = Owned().Match(Path.GetFileName(dir));
            if (match.Success && int.TryParse(match.Groups[1].Value, out int pid) && pid != Environment.ProcessId && !Alive(pid))
                Delete(dir);
        }
    }

    /// <summary>Whether process <paramref name="pid"/> is still running (fixtures with their own folder naming sweep with it).</summary>
    public static bool Alive(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }
}
