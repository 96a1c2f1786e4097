using System.Globalization;
using System.Net;
using System.Text;

namespace InterpMesh.Plugins.Probing.Report;

/// <summary>Small self-contained SVG line charts (no scripts, no external resources).</summary>
internal static class SvgChart
{
    private static readonly string[] Colours = ["#4472c4", "#ed7d31", "#70ad47", "#a5a5a5", "#ffc000", "#5b9bd5"];

    /// <summary>One line per series over shared x labels; y from 0 to 1.</summary>
    public static byte[] Lines(string title, IReadOnlyList<string> xLabels, IReadOnlyList<(string Name, IReadOnlyList<double?> Values)> series, string yLabel)
    {
        const int w = 640, h = 360, left = 56, right = 150, top = 36, bottom = 80;
        double plotW = w - left - right, plotH = h - top - bottom;
        double X(int i) => left + (xLabels.Count == 1 ? plotW / 2 : plotW * i / (xLabels.Count - 1));
        double Y(double v) => top + plotH * (1 - Math.Clamp(v, 0, 1));
        var c = CultureInfo.InvariantCulture;
        var svg = new StringBuilder();
        svg.Append(c, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">");
        svg.Append(c, $"<text x=\"{w / 2}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{WebUtility.HtmlEncode(title)}</text>");
        for (int t = 0; t <= 4; t++)
        {
            double v = t / 4.0;
            svg.Append(c, $"<line x1=\"{left}\" x2=\"{left + plotW}\" y1=\"{Y(v):0.#}\" y2=\"{Y(v):0.#}\" stroke=\"#ddd\"/><text x=\"{left - 6}\" y=\"{Y(v) + 4:0.#}\" text-anchor=\"end\">{v:0.##}</text>");
        }
        svg.Append(c, $"<text x=\"14\" y=\"{top + plotH / 2:0}\" transform=\"rotate(-90 14 {top + plotH / 2:0})\" text-anchor=\"middle\">{WebUtility.HtmlEncode(yLabel)}</text>");
        for (int i = 0; i < xLabels.Count; i++)
            svg.Append(c, $"<text x=\"{X(i):0.#}\" y=\"{top + plotH + 14}\" text-anchor=\"end\" transform=\"rotate(-35 {X(i):0.#} {top + plotH + 14})\">{WebUtility.HtmlEncode(xLabels[i])}</text>");
        for (int s = 0; s < series.Count; s++)
        {
            string colour = Colours[s % Colours.Length];
            var points = series[s].Values.Select((v, i) => v is double d ? $"{X(i):0.#},{Y(d):0.#}" : null).Where(p => p is not null);
            svg.Append(c, $"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{string.Join(' ', points)}\"/>");
            for (int i = 0; i < series[s].Values.Count; i++)
            {
                if (series[s].Values[i] is double d)
                    svg.Append(c, $"<circle cx=\"{X(i):0.#}\" cy=\"{Y(d):0.#}\" r=\"3\" fill=\"{colour}\"><title>{WebUtility.HtmlEncode(series[s].Name)} {WebUtility.HtmlEncode(xLabels[i])}: {d:0.###}</title></circle>");
            }
            svg.Append(c, $"<rect x=\"{w - right + 12}\" y=\"{top + 16 * s}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{w - right + 26}\" y=\"{top + 9 + 16 * s}\">{WebUtility.HtmlEncode(series[s].Name)}</text>");
        }
        return Encoding.UTF8.GetBytes(svg.Append("</svg>").ToString());
    }
}
