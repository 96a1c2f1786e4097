using System.Text.Json.Nodes;
using Google.Protobuf;

namespace InterpMesh.AnalysisWorker.Jobs;

/// <summary>SDK results to the wire.</summary>
internal static class ResultMapping
{
    // The gateways' JobMapping reads results back with the same settings (protobuf JSON, default values left out).
    private static readonly JsonFormatter Formatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));

    /// <summary>A run's result as the store keeps it (protobuf JSON, figures base64): opaque to the store, read by every gateway.</summary>
    public static string ToJson(Contracts.V1.AnalysisResult result) => Formatter.Format(result);

    /// <summary>
    /// How a run that returned <paramref name="result"/> ends: succeeded with it, or — when it is
    /// larger on the wire than <paramref name="maxBytes"/> — failed with RESOURCE_EXHAUSTED saying
    /// what to do, because every GetJob would otherwise fail for every client.
    /// </summary>
    public static InterpMesh.Jobs.JobOutcome Outcome(string plugin, InterpMesh.Plugins.PluginResult result, int maxBytes)
    {
        var proto = ToProto(result);
        int size = proto.CalculateSize();
        if (size <= maxBytes)
            return InterpMesh.Jobs.JobOutcome.Succeeded(ToJson(proto));
        var largest = proto.Tables.Select(t => (What: $"table '{Cut(t.Name)}'", Bytes: t.CalculateSize()))
            .Concat(proto.Figures.Select(f => (What: $"figure '{Cut(f.Name)}'", Bytes: f.CalculateSize())))
            .Append((What: "the summary", Bytes: proto.SummaryJson.Length))
            .MaxBy(p => p.Bytes);
        return InterpMesh.Jobs.JobOutcome.Failed(
            $"plugin '{plugin}' returned a result of {Mib(size)} (the largest part: {largest.What}, {Mib(largest.Bytes)}); a job keeps at most {Mib(maxBytes)} " +
            "(Worker:MaxResultBytes) so that every client can read it — save large tables or figures as an artifact and return its name, or ask for less",
            "RESOURCE_EXHAUSTED");
    }

    private static string Mib(long bytes) => $"{bytes / (1024.0 * 1024.0):0.0#} MiB";

    private static string Cut(string name) => name.Length > 40 ? name[..40] + "…" : name;

    public static Contracts.V1.AnalysisResult ToProto(InterpMesh.Plugins.PluginResult result)
    {
        var proto = new Contracts.V1.AnalysisResult { SummaryJson = (result.Summary ?? []).ToJsonString() };
        foreach (var t in result.Tables ?? [])
        {
            var rows = new JsonArray([.. t.Rows.Select(r => (JsonNode)new JsonArray([.. r.Select(v => v?.DeepClone())]))]);
            var table = new Contracts.V1.Table { Name = t.Name, RowsJson = rows.ToJsonString() };
            table.Columns.AddRange(t.Columns);
            proto.Tables.Add(table);
        }
        proto.Artifacts.AddRange(result.Artifacts ?? []);
        foreach (var f in result.Figures ?? [])
            proto.Figures.Add(new Contracts.V1.Figure { Name = f.Name, MediaType = f.MediaType, Content = ByteString.CopyFrom(f.Content), Caption = f.Caption ?? "" });
        return proto;
    }
}
