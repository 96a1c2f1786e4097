using System.Globalization;
using System.Net;
using System.Text;

namespace InterpMesh.Plugins.RetrievalHeads.Report;

/// <summary>Layer × head heatmap as a self-contained SVG (white = 0, dark blue = max of the scale).</summary>
internal static class Heatmap
{
    public static byte[] Svg(string title, double[,] values, double max = 1)
    {
        int layers = values.GetLength(0), heads = values.GetLength(1);
        int cell = Math.Clamp(360 / Math.Max(layers, heads), 12, 40);
        int left = 70, top = 40, w = left + heads * cell + 20, h = top + layers * cell + 40;
        var c = CultureInfo.InvariantCulture;
        var svg = new StringBuilder();
        svg.Append(c, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">");
        svg.Append(c, $"<text x=\"{w / 2}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{WebUtility.HtmlEncode(title)}</text>");
        for (int l = 0; l < layers; l++)
        {
            svg.Append(c, $"<text x=\"{left - 6}\" y=\"{top + l * cell + cell / 2 + 4}\" text-anchor=\"end\">layer {l}</text>");
            for (int hd = 0; hd < heads; hd++)
            {
                double v = Math.Clamp(values[l, hd] / max, 0, 1);
                int r = (int)(255 - 207 * v), g = (int)(255 - 175 * v), b = (int)(255 - 95 * v);
                svg.Append(c, $"<rect x=\"{left + hd * cell}\" y=\"{top + l * cell}\" width=\"{cell - 1}\" height=\"{cell - 1}\" fill=\"rgb({r},{g},{b})\"><title>L{l}H{hd}: {values[l, hd]:0.###}</title></rect>");
            }
        }
        for (int hd = 0; hd < heads; hd++)
            svg.Append(c, $"<text x=\"{left + hd * cell + cell / 2}\" y=\"{top + layers * cell + 14}\" text-anchor=\"middle\">{hd}</text>");
        svg.Append(c, $"<text x=\"{left + heads * cell / 2}\" y=\"{top + layers * cell + 30}\" text-anchor=\"middle\">head</text>");
        return Encoding.UTF8.GetBytes(svg.Append("</svg>").ToString());
    }
}
