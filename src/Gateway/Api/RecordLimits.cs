using System.Globalization;
using System.Text;
using Grpc.Core;
using InterpMesh.Contracts;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Api;

/// <summary>
/// Sizes of what clients send that the gateway stores and later lists, checked at the API edge
/// before anything is stored: a job's <c>parameters_json</c> (kept in its record, shown by GetJob and
/// ListJobs) and an artifact's <c>metadata_json</c> and file list (kept in its manifest, shown by
/// ListArtifacts). A field over its limit is RESOURCE_EXHAUSTED with <c>grpc-retry-pushback-ms: -1</c>
/// (the same request is refused whenever it is sent) and a message naming the field, its size, the
/// limit and the setting. Names that have a format (plugin ids, model names, artifact and file
/// names) are INVALID_ARGUMENT when they break it, length included, quoting at most a short piece.
/// </summary>
public sealed class RecordLimits(IOptions<GatewayOptions> options)
{
    /// <summary>A list page ends before its artifacts would exceed this (gRPC clients receive at most 4 MiB by default).</summary>
    public const int PageBudgetBytes = 3 << 20;

    /// <summary>Longest model name (configured names are checked against it at start).</summary>
    public const int MaxModelNameLength = 128;

    /// <summary>Longest plugin id: the plugin folder's id rule (<c>[a-z0-9][a-z0-9-]{0,62}</c>).</summary>
    public const int MaxPluginIdLength = 63;

    private readonly LimitsOptions limits = options.Value.Limits;

    /// <summary>Checks an analysis request (RunAnalysis, SubmitJob) before the job is created.</summary>
    public void Check(AnalysisRequest request)
    {
        Name("plugin", request.Plugin, MaxPluginIdLength, "a plugin id as ListPlugins shows it");
        Name("model", request.Model, MaxModelNameLength, "a model name as the gateway's configuration has it");
        Size("parameters_json", request.ParametersJson, limits.MaxParametersBytes, "MaxParametersBytes");
    }

    /// <summary>Checks an artifact upload's header (PutArtifact) before anything is written.</summary>
    public void Check(Contracts.V1.ArtifactInfo header)
    {
        Size("metadata_json", header.MetadataJson, limits.MaxMetadataBytes, "MaxMetadataBytes");
        if (header.Files.Count > limits.MaxArtifactFiles)
        {
            throw Refused($"the header lists {header.Files.Count} files; the limit is {limits.MaxArtifactFiles} (Gateway:Limits:MaxArtifactFiles): "
                + "put the files in fewer, larger ones, or split the artifact");
        }
    }

    /// <summary>The page size to serve for a request's <paramref name="requested"/> size: 0 = the default; over the maximum = the maximum.</summary>
    public int PageSize(int requested) => requested switch
    {
        < 0 => throw new RpcException(new Status(StatusCode.InvalidArgument, $"page_size is {requested}; use 0 for the default ({limits.DefaultPageSize}) or up to {limits.MaxPageSize}")),
        0 => limits.DefaultPageSize,
        _ => Math.Min(requested, limits.MaxPageSize),
    };

    private static void Name(string field, string value, int maxLength, string what)
    {
        if (value.Length > maxLength)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"{field} is {value.Length} characters long ('{value[..20]}…'); it must be {what}, at most {maxLength} characters"));
    }

    private static void Size(string field, string value, int maxBytes, string setting)
    {
        int bytes = Encoding.UTF8.GetByteCount(value);
        if (bytes > maxBytes)
            throw Refused($"{field} is {Bytes(bytes)}; the limit is {Bytes(maxBytes)} (Gateway:Limits:{setting}): send less, or store large inputs as an artifact and pass its name");
    }

    private static RpcException Refused(string message) => new(new Status(StatusCode.ResourceExhausted, message), RetryPushback.Never());

    /// <summary>A byte count for people, exact where it matters: 312 bytes, 262145 bytes, 256 KiB, 19.1 MiB.</summary>
    internal static string Bytes(long n) => InterpMesh.Artifacts.ArtifactStore.DescribeBytes(n);
}
