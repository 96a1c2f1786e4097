using System.Text;
using System.Text.Json;

namespace InterpMesh.Plugins.Probing.Data;

/// <summary>One labelled example. The target token is either a token index or a character span of the text.</summary>
internal sealed record ProbingRow(string Text, string? Label, int? TargetIndex, (int Start, int End)? TargetSpan);

/// <summary>
/// Reads a dataset from the parameters: <c>rows</c> (objects with text, label, optional
/// target_index or target_span), parallel <c>texts</c> + <c>labels</c> (+ <c>target_indices</c>),
/// or <c>dataset</c>, an uploaded artifact holding a JSONL file of row objects (read here, with
/// labels as in the parameters: a string, or a number or boolean as its JSON text). Every problem names
/// the row it is in.
/// </summary>
internal static class ProbingDataset
{
    public static async Task<List<ProbingRow>> LoadAsync(ProbingParameters p, IArtifactStore artifacts, bool labelsRequired, CancellationToken ct)
    {
        var rows = new List<ProbingRow>();
        if (p.Rows is { } inline)
        {
            rows.AddRange(inline.Select(r => new ProbingRow(r.Text, r.Label, r.TargetIndex, r.TargetSpan is [int start, int end] ? (start, end) : null)));
        }
        else if (p.Texts is { } t)
        {
            var labels = p.Labels;
            var targets = p.TargetIndices;
            if (labels is not null && labels.Count != t.Count)
                throw new InvalidParametersException($"texts has {t.Count} entries but labels has {labels.Count}; give one label per text");
            if (targets is not null && targets.Count != t.Count)
                throw new InvalidParametersException($"texts has {t.Count} entries but target_indices has {targets.Count}; give one target per text");
            rows.AddRange(t.Select((text, i) => new ProbingRow(text, labels?[i], targets?[i], null)));
        }
        else if (p.Dataset is { } name)
        {
            var files = await artifacts.LoadFilesAsync(name, ct);
            var file = files.Keys.FirstOrDefault(f => f.EndsWith(".jsonl", StringComparison.Ordinal))
                ?? throw new InvalidParametersException($"dataset artifact '{name}' has no .jsonl file (it has {string.Join(", ", files.Keys)})");
            int line = 0;
            foreach (var text in Encoding.UTF8.GetString(files[file]).Split('\n'))
            {
                line++;
                if (string.IsNullOrWhiteSpace(text))
                    continue;
                try
                {
                    using var doc = JsonDocument.Parse(text);
                    rows.Add(Row(doc.RootElement, $"{file} line {line}"));
                }
                catch (JsonException e)
                {
                    throw new InvalidParametersException($"{file} line {line} is not valid JSON: {e.Message}");
                }
            }
        }
        else
        {
            throw new InvalidParametersException("give the data as rows, as texts + labels, or as dataset (a JSONL artifact)");
        }
        if (rows.Count == 0)
            throw new InvalidParametersException("the dataset is empty; give at least two examples of each class");
        for (int i = 0; i < rows.Count; i++)
        {
            if (string.IsNullOrEmpty(rows[i].Text))
                throw new InvalidParametersException($"row {i} has an empty text");
            if (labelsRequired && rows[i].Label is null)
                throw new InvalidParametersException($"row {i} has no label");
            if (rows[i].TargetSpan is { } s && (s.Start < 0 || s.End <= s.Start || s.End > rows[i].Text.Length))
                throw new InvalidParametersException($"row {i}: target_span [{s.Start}, {s.End}) is outside its text of {rows[i].Text.Length} characters");
        }
        return rows;
    }

    private static string Label(JsonElement e) => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText();

    private static ProbingRow Row(JsonElement row, string where)
    {
        if (row.ValueKind != JsonValueKind.Object)
            throw new InvalidParametersException($"{where} must be an object with text and label");
        if (!row.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
            throw new InvalidParametersException($"{where} has no text (a string)");
        string? label = row.TryGetProperty("label", out var l) ? Label(l) : null;
        int? target = row.TryGetProperty("target_index", out var t) ? t.GetInt32() : null;
        (int, int)? span = row.TryGetProperty("target_span", out var sp) && sp.GetArrayLength() == 2 ? (sp[0].GetInt32(), sp[1].GetInt32()) : null;
        return new ProbingRow(text.GetString()!, label, target, span);
    }
}
