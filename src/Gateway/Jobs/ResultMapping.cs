using System.Text.Json.Nodes;
using Google.Protobuf;

namespace InterpMesh.Gateway.Jobs;

/// <summary>SDK results to the wire.</summary>
internal static class ResultMapping
{
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
