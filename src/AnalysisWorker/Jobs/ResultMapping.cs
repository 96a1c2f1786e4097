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
