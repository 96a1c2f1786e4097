using System.Text.RegularExpressions;
using System.Xml.Linq;
using k8s.Models;

namespace InterpMesh.Deploy.Tests;

/// <summary>
/// Static checks of deploy/docker/*.Dockerfile (no container engine runs here): multi-stage,
/// pinned noble base images (new enough libstdc++ for TorchSharp), a numeric non-root user, the
/// ports the manifests use, COPY sources that exist, and the CUDA switch wired to the MSBuild
/// property the runtime project reads.
/// </summary>
public sealed partial class DockerfileTests
{
    public static readonly TheoryData<string, string, string> Images = new()
    {
        // Dockerfile, image name in the manifests, project it publishes.
        { "gateway.Dockerfile", "interpmesh/gateway", "src/Gateway/InterpMesh.Gateway.csproj" },
        { "model-service.Dockerfile", "interpmesh/model-service", "src/ModelService/Host/InterpMesh.ModelService.csproj" },
        { "worker.Dockerfile", "interpmesh/worker", "src/AnalysisWorker/InterpMesh.AnalysisWorker.csproj" },
    };

    [Theory]
    [MemberData(nameof(Images))]
    public void The_image_is_multi_stage_non_root_and_pinned_to_a_base_with_a_new_enough_libstdcxx(string dockerfile, string image, string project)
    {
        var exposed = CheckImage(dockerfile, project);
        // The ports it exposes are the ones the pods declare, in every kustomization.
        foreach (var kustomization in Rendered.Kustomizations)
        {
            var containers = Rendered.Of(kustomization).PodTemplates().SelectMany(t => t.Template.Spec.Containers).Where(c => c.Image.StartsWith(image + ":", StringComparison.Ordinal)).ToList();
            Assert.NotEmpty(containers);
            Assert.All(containers, c => Assert.Equal(exposed, c.Ports.Select(p => p.ContainerPort).Order().ToList()));
        }
    }

    /// <summary>The checks that need no manifest: multi-stage on noble, non-root, no shim, publishes and starts its project; returns the ports it exposes.</summary>
    private static List<int> CheckImage(string dockerfile, string project)
    {
        var lines = Instructions(dockerfile);
        var args = lines.Where(l => l.Op == "ARG").Select(l => l.Args.Split('=', 2)).Where(a => a.Length == 2).ToDictionary(a => a[0], a => a[1], StringComparer.Ordinal);
        var froms = lines.Where(l => l.Op == "FROM").Select(l => Expand(l.Args.Split(' ')[0], args)).ToList();
        Assert.True(froms.Count >= 2, $"{dockerfile}: build and runtime stages expected");
        Assert.All(froms, f =>
        {
            Assert.Matches(@"^mcr\.microsoft\.com/dotnet/(sdk|aspnet):10\.0[.0-9]*-noble$", f);
            Assert.DoesNotContain(":latest", f, StringComparison.Ordinal);
        });
        Assert.Contains("aspnet", froms[^1], StringComparison.Ordinal);
        // The last USER is numeric and not root, and comes after the last FROM.
        int lastFrom = lines.FindLastIndex(l => l.Op == "FROM");
        var user = lines.Skip(lastFrom).LastOrDefault(l => l.Op == "USER");
        Assert.True(user is not null, $"{dockerfile}: the runtime stage sets no USER");
        Assert.Matches("^[1-9][0-9]*(:[1-9][0-9]*)?$", user.Args);
        // Kubernetes probes the gRPC health service; the image says so instead of a HEALTHCHECK it cannot run.
        Assert.Contains(lines, l => l.Op == "HEALTHCHECK" && l.Args == "NONE");
        // No compatibility patch inside images.
        Assert.Contains(lines, l => l.Op == "RUN" && l.Args.Contains("test ! -e /app/libglibcxx-shim.so", StringComparison.Ordinal));
        // It publishes the project, and starts its assembly.
        Assert.Contains(lines, l => l.Op == "RUN" && l.Args.Contains($"dotnet publish {project}", StringComparison.Ordinal));
        string assembly = XDocument.Load(Path.Combine(RepoPaths.Root, project)).Descendants("AssemblyName").Single().Value;
        Assert.Equal($"[\"dotnet\", \"{assembly}.dll\"]", lines.Last(l => l.Op == "ENTRYPOINT").Args);
        return lines.Where(l => l.Op == "EXPOSE").SelectMany(l => l.Args.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Select(int.Parse).Order().ToList();
    }

    [Fact]
    public void The_worker_image_exposes_the_ports_of_its_appsettings_and_carries_the_built_in_plugins()
    {
        var exposed = CheckImage("worker.Dockerfile", "src/AnalysisWorker/InterpMesh.AnalysisWorker.csproj");
        Assert.Equal([9465, 50052], exposed);
        // The contract the manifests follow: gRPC health on 50052 (HTTP/2), metrics on 9465 (HTTP/1.1).
        using var settings = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.Root, "src/AnalysisWorker/appsettings.json")));
        var endpoints = settings.RootElement.GetProperty("Kestrel").GetProperty("Endpoints");
        Assert.Equal(("http://0.0.0.0:50052", "Http2"), (endpoints.GetProperty("Grpc").GetProperty("Url").GetString(), endpoints.GetProperty("Grpc").GetProperty("Protocols").GetString()));
        Assert.Equal(("http://0.0.0.0:9465", "Http1"), (endpoints.GetProperty("Metrics").GetProperty("Url").GetString(), endpoints.GetProperty("Metrics").GetProperty("Protocols").GetString()));
        var lines = Instructions("worker.Dockerfile");
        Assert.Contains(lines, l => l.Op == "RUN" && l.Args.Contains("cp -R plugins /app/plugins", StringComparison.Ordinal));
        // The image's appsettings.json names them (relative to /app); no environment variable overrides a mounted one.
        Assert.Equal("plugins", settings.RootElement.GetProperty("Worker").GetProperty("PluginsPath").GetString());
        Assert.DoesNotContain(lines, l => l.Op == "ENV" && l.Args.Contains("Worker__", StringComparison.Ordinal));
    }

    [Fact]
    public void The_gateway_image_carries_no_plugins_and_no_libtorch()
    {
        var lines = Instructions("gateway.Dockerfile");
        Assert.DoesNotContain(lines, l => l.Op == "COPY" && (l.Args.Contains("src/Plugins", StringComparison.Ordinal) || l.Args.Contains("src/ModelService", StringComparison.Ordinal)));
        var run = lines.Single(l => l.Op == "RUN" && l.Args.Contains("dotnet publish", StringComparison.Ordinal)).Args;
        Assert.Contains("test ! -e /app/plugins", run, StringComparison.Ordinal);
        Assert.Contains("test ! -e /app/TorchSharp.dll", run, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Images))]
    public void Every_copied_path_exists_and_is_in_the_build_context(string dockerfile, string image, string project)
    {
        _ = image;
        var ignored = File.ReadAllLines(Path.Combine(RepoPaths.Root, ".dockerignore")).Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
        var copies = Instructions(dockerfile).Where(l => l.Op == "COPY" && !l.Args.StartsWith("--from", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(copies);
        foreach (var copy in copies)
        {
            var parts = copy.Args.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            foreach (var source in parts[..^1])
            {
                string path = Path.Combine(RepoPaths.Root, source.TrimEnd('/'));
                Assert.True(File.Exists(path) || Directory.Exists(path), $"{dockerfile}: COPY {source}: no such file or folder in the repository");
                Assert.DoesNotContain(source.TrimEnd('/').Split('/')[0], ignored);
            }
        }
        // The project's own folder and every project it references are copied.
        var copied = copies.SelectMany(c => c.Args.Split(' ', StringSplitOptions.RemoveEmptyEntries)[..^1]).Select(s => s.TrimEnd('/')).ToList();
        foreach (var dir in ProjectClosure(Path.Combine(RepoPaths.Root, project)))
            Assert.True(copied.Any(c => dir == c || dir.StartsWith(c + "/", StringComparison.Ordinal)), $"{dockerfile}: {dir} is needed by {project} but not copied");
    }

    [Fact]
    public void The_cuda_build_argument_selects_the_cuda_torchsharp_package()
    {
        var lines = Instructions("model-service.Dockerfile");
        Assert.Contains(lines, l => l.Op == "ARG" && l.Args == "INTERPMESH_DEVICE=cpu");
        Assert.Contains(lines, l => l.Op == "RUN" && l.Args.Contains("-p:InterpMeshDevice=${INTERPMESH_DEVICE}", StringComparison.Ordinal));
        // The property the Dockerfile sets is the one the runtime project switches TorchSharp on.
        var runtime = XDocument.Load(Path.Combine(RepoPaths.Root, "src/ModelService/Runtime/InterpMesh.Runtime.csproj"));
        var references = runtime.Descendants("PackageReference").ToDictionary(e => e.Attribute("Include")!.Value, e => e.Attribute("Condition")?.Value ?? "");
        Assert.Equal("'$(InterpMeshDevice)' == 'cuda'", references["TorchSharp-cuda-linux"]);
        Assert.Equal("'$(InterpMeshDevice)' != 'cuda'", references["TorchSharp-cpu"]);
        var versions = XDocument.Load(Path.Combine(RepoPaths.Root, "Directory.Packages.props")).Descendants("PackageVersion").Select(e => e.Attribute("Include")!.Value).ToList();
        Assert.Contains("TorchSharp-cuda-linux", versions);
        // The gpu overlay runs the CUDA variant, the others the CPU one.
        Assert.All(Rendered.Of("overlays/gpu").ModelServices(), s => Assert.EndsWith("-cuda", s.Spec.Template.Spec.Containers.Single().Image, StringComparison.Ordinal));
    }

    internal sealed record Instruction(string Op, string Args);

    /// <summary>The Dockerfile's instructions, continuation lines joined, comments dropped.</summary>
    internal static List<Instruction> Instructions(string dockerfile)
    {
        var result = new List<Instruction>();
        string pending = "";
        foreach (var raw in File.ReadAllLines(Path.Combine(RepoPaths.Root, "deploy", "docker", dockerfile)))
        {
            string line = raw.Trim();
            if (line.StartsWith('#') || (line.Length == 0 && pending.Length == 0))
                continue;
            if (line.EndsWith('\\'))
            {
                pending += line[..^1].Trim() + " ";
                continue;
            }
            string full = (pending + line).Trim();
            pending = "";
            if (full.Length == 0)
                continue;
            int space = full.IndexOf(' ', StringComparison.Ordinal);
            result.Add(new Instruction(full[..space].ToUpperInvariant(), Whitespace().Replace(full[(space + 1)..], " ").Trim()));
        }
        return result;
    }

    private static string Expand(string value, Dictionary<string, string> args) =>
        Regex.Replace(value, @"\$\{([A-Za-z_]+)\}", m => args.TryGetValue(m.Groups[1].Value, out var v) ? v : m.Value);

    /// <summary>Repository-relative folders of a project and every project it references, transitively.</summary>
    private static HashSet<string> ProjectClosure(string project)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var todo = new Stack<string>([Path.GetFullPath(project)]);
        while (todo.TryPop(out var p))
        {
            if (!seen.Add(Path.GetRelativePath(RepoPaths.Root, Path.GetDirectoryName(p)!)))
                continue;
            foreach (var reference in XDocument.Load(p).Descendants("ProjectReference"))
                todo.Push(Path.GetFullPath(Path.Combine(Path.GetDirectoryName(p)!, reference.Attribute("Include")!.Value)));
            foreach (var proto in XDocument.Load(p).Descendants("Protobuf"))
                seen.Add(Path.GetRelativePath(RepoPaths.Root, Path.GetFullPath(Path.Combine(Path.GetDirectoryName(p)!, proto.Attribute("ProtoRoot")!.Value))));
        }
        return seen;
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();
}
