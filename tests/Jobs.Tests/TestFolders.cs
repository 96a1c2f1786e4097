using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;

namespace InterpMesh.Jobs.Tests;

/// <summary>
/// Temporary folders this test process removes at exit; folders of earlier test processes that
/// have exited (the host may be killed before its exit handlers run) are removed at start. Named
/// like tests/Gateway.Tests/TempFolders.cs: interpmesh-PREFIX-pPID-GUID.
/// </summary>
public static partial class TestFolders
{
    private static readonly ConcurrentBag<string> Created = [];

    [GeneratedRegex(@"^interpmesh-jobs-[a-z-]*p(\d+)-[0-9a-f]{32}$")]
    private static partial Regex Owned();

    static TestFolders()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Delete([.. Created]);
        foreach (var dir in Directory.EnumerateDirectories(Path.GetTempPath(), "interpmesh-jobs-*"))
        {
            var match = Owned().Match(Path.GetFileName(dir));
            if (match.Success && int.TryParse(match.Groups[1].Value, out int pid) && pid != Environment.ProcessId && !Alive(pid))
                Delete(dir);
        }
    }

    /// <summary>A new folder under the system's temporary folder: interpmesh-jobs-<paramref name="prefix"/>pPID-GUID.</summary>
    public static string Create(string prefix)
    {
        string path = Path.Combine(Path.GetTempPath(), $"interpmesh-jobs-{prefix}p{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        Created.Add(path);
        return path;
    }

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
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }

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
