using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Cli.Report;

/// <summary>
/// A single self-contained HTML report: inline SVG and data-URI images, inline CSS, no scripts and
/// a Content-Security-Policy that forbids every network fetch, so it opens offline and anywhere.
/// </summary>
internal sealed class HtmlReport(string title)
{
    private readonly StringBuilder body = new();
    private readonly List<(string Id, string Title)> toc = [];
    private static readonly CultureInfo C = CultureInfo.InvariantCulture;

    private static string E(string s) => WebUtility.HtmlEncode(s);

    public void Section(string id, string heading, string intro)
    {
        if (toc.Count > 0)
            body.Append("</section>\n");
        toc.Add((id, heading));
        body.Append(C, $"<section id=\"{E(id)}\"><h2>{E(heading)}</h2><p>{E(intro)}</p>\n");
    }

    public void Paragraph(string text) => body.Append(C, $"<p>{E(text)}</p>\n");

    public void Error(string text) => body.Append(C, $"<p class=\"error\">{E(text)}</p>\n");

    /// <summary>An SVG the report generated itself (trusted markup).</summary>
    public void Chart(string svg, string caption) =>
        body.Append(C, $"<figure>{svg}<figcaption>{E(caption)}</figcaption></figure>\n");

    /// <summary>A plugin's figure: SVG or PNG bytes, embedded as a data URI image (a figure's markup never runs in the page).</summary>
    public void Figure(Figure figure)
    {
        string media = figure.MediaType is "image/svg+xml" or "image/png" or "image/jpeg" ? figure.MediaType : "application/octet-stream";
        body.Append(C, $"<figure><img alt=\"{E(figure.Name)}\" src=\"data:{media};base64,{Convert.ToBase64String(figure.Content.Span)}\"><figcaption>{E(figure.Caption.Length > 0 ? figure.Caption : figure.Name)}</figcaption></figure>\n");
    }

    public void Table(string caption, IReadOnlyList<string> columns, IEnumerable<IReadOnlyList<string>> rows)
    {
        body.Append(C, $"<table><caption>{E(caption)}</caption><tr>{string.Concat(columns.Select(c => $"<th>{E(c)}</th>"))}</tr>");
        foreach (var row in rows)
            body.Append(C, $"<tr>{string.Concat(row.Select(v => $"<td>{E(v)}</td>"))}</tr>");
        body.Append("</table>\n");
    }

    /// <summary>Tokens with a background whose strength is the activation relative to <paramref name="max"/>; the value shows on hover.</summary>
    public void Tokens(string label, IReadOnlyList<(string Token, double Activation)> tokens, double max)
    {
        body.Append(C, $"<div class=\"tokens\"><span class=\"label\">{E(label)}</span>");
        foreach (var (token, a) in tokens)
        {
            double alpha = max > 0 ? Math.Clamp(a / max, 0, 1) : 0;
            body.Append(C, $"<span class=\"tok\" style=\"background:rgba(237,125,49,{alpha:0.##})\" title=\"{a:0.###}\">{E(token)}</span>");
        }
        body.Append("</div>\n");
    }

    /// <summary>A job as the generic section of <c>interpmesh run --report</c>: summary, tables (first rows), figures.</summary>
    public void Job(Job job, int maxRows = 20)
    {
        Section($"job-{job.Id}", $"{job.Plugin} — {job.State.ToString().ToUpperInvariant()}", $"Job {job.Id} on model '{job.Model}'.");
        if (job.Error.Length > 0)
            Error($"{job.ErrorCode}: {job.Error}");
        if (job.Result is not { } r)
            return;
        if (JsonNode.Parse(r.SummaryJson) is JsonObject summary)
            Table("summary", ["key", "value"], summary.Select(kv => (IReadOnlyList<string>)[kv.Key, Cell(kv.Value)]));
        foreach (var f in r.Figures)
            Figure(f);
        foreach (var t in r.Tables)
        {
            var rows = JsonNode.Parse(t.RowsJson)!.AsArray();
            Table(rows.Count > maxRows ? $"{t.Name} (first {maxRows} of {rows.Count} rows)" : t.Name, [.. t.Columns],
                rows.Take(maxRows).Select(row => (IReadOnlyList<string>)[.. row!.AsArray().Select(Cell)]));
        }
        if (r.Artifacts.Count > 0)
            Paragraph("Artifacts: " + string.Join(", ", r.Artifacts));
    }

    /// <summary>A JSON value as table text: numbers rounded, strings bare, the rest compact JSON.</summary>
    public static string Cell(JsonNode? v) => v switch
    {
        null => "",
        JsonValue x when x.TryGetValue<double>(out var d) => d.ToString("0.####", C),
        JsonValue x when x.TryGetValue<string>(out var s) => s,
        _ => v.ToJsonString(),
    };

    public string Render()
    {
        var html = new StringBuilder();
        html.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        html.Append("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">");
        html.Append(C, $"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{E(title)}</title><style>{Style}</style></head><body>\n");
        html.Append(C, $"<h1>{E(title)}</h1><p class=\"meta\">Generated {DateTimeOffset.Now:yyyy-MM-dd HH:mm zzz} by interpmesh.</p>\n");
        if (toc.Count > 1)
            html.Append(C, $"<nav><ol>{string.Concat(toc.Select(t => $"<li><a href=\"#{E(t.Id)}\">{E(t.Title)}</a></li>"))}</ol></nav>\n");
        html.Append(body);
        if (toc.Count > 0)
            html.Append("</section>\n");
        return html.Append("</body></html>\n").ToString();
    }

    /// <summary>Writes the report (creating its folder) and returns its full path.</summary>
    public string Save(string path)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string staging = full + ".tmp";
        File.WriteAllText(staging, Render(), new UTF8Encoding(false));
        File.Move(staging, full, overwrite: true);
        return full;
    }

    private const string Style = """
        body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
        h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
        .meta{color:#666}nav ol{columns:2}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
        figcaption{font-size:.85em;color:#555;max-width:560px}
        table{border-collapse:collapse;margin:.8em 0;font-size:.85em}caption{text-align:left;font-weight:600;padding:.3em 0}
        th,td{border:1px solid #ddd;padding:.2em .5em;text-align:left;max-width:420px;overflow-wrap:anywhere}th{background:#f4f4f4}
        .error{color:#b00020;font-weight:600}.tokens{margin:.3em 0;line-height:1.9;font-family:ui-monospace,monospace;font-size:.9em}
        .tokens .label{color:#666;margin-right:.6em}.tok{padding:.1em .15em;margin-right:.15em;border-radius:3px;border:1px solid #eee}
        """;
}
