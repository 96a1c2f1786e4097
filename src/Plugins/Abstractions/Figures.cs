using System.Globalization;
using System.Net;
using System.Text;

namespace InterpMesh.Plugins;

/// <summary>
/// Charts as self-contained SVG markup (no scripts, fonts or external resources), so a figure
/// renders anywhere without a network: the plugins' figures, the CLI's HTML reports and any
/// third-party plugin's (<c>new ResultFigure { Name = name, MediaType = "image/svg+xml", Content = Encoding.UTF8.GetBytes(svg), Caption = ... }</c>).
/// </summary>
public static class Figures
{
    private static readonly string[] Colours = ["#4472c4", "#ed7d31", "#70ad47", "#7f6084", "#ffc000", "#5b9bd5"];
    private static readonly CultureInfo C = CultureInfo.InvariantCulture;

    private static string E(string s) => WebUtility.HtmlEncode(s);

    /// <summary>Round bounds and a 1/2/2.5/5 × 10ⁿ tick step for an axis covering the values.</summary>
    private static (double Lo, double Hi, double Step) Axis(IEnumerable<double> values, bool fromZero)
    {
        var v = values.Where(double.IsFinite).ToList();
        double lo = v.Count == 0 ? 0 : v.Min(), hi = v.Count == 0 ? 1 : v.Max();
        if (fromZero)
            lo = Math.Min(lo, 0);
        if (hi - lo < 1e-12)
            hi = lo + (lo == 0 ? 1 : Math.Abs(lo) * 0.1);
        double raw = (hi - lo) / 4, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw))), norm = raw / magnitude;
        double step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
        return (Math.Floor(lo / step + 1e-9) * step, Math.Ceiling(hi / step - 1e-9) * step, step);
    }

    private static IEnumerable<double> Ticks((double Lo, double Hi, double Step) axis)
    {
        for (int i = 0; axis.Lo + i * axis.Step <= axis.Hi + axis.Step * 1e-6; i++)
            yield return axis.Lo + i * axis.Step;
    }

    /// <summary>One line per series over a numeric x axis; the y axis scales to the data.</summary>
    public static string Lines(string title, string xLabel, string yLabel, IReadOnlyList<(string Name, IReadOnlyList<(double X, double Y)> Points)> series, bool yFromZero = false)
    {
        const int w = 560, h = 300, left = 60, right = 130, top = 34, bottom = 46;
        double plotW = w - left - right, plotH = h - top - bottom;
        var xAxis = Axis(series.SelectMany(s => s.Points.Select(p => p.X)), false);
        var yAxis = Axis(series.SelectMany(s => s.Points.Select(p => p.Y)), yFromZero);
        var (x0, x1, y0, y1) = (xAxis.Lo, xAxis.Hi, yAxis.Lo, yAxis.Hi);
        double X(double x) => left + plotW * (x - x0) / (x1 - x0);
        double Y(double y) => top + plotH * (1 - (y - y0) / (y1 - y0));
        var svg = new StringBuilder();
        svg.Append(C, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\" aria-label=\"{E(title)}\">");
        svg.Append(C, $"<text x=\"{w / 2}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{E(title)}</text>");
        foreach (double yv in Ticks(yAxis))
        {
            svg.Append(C, $"<line x1=\"{left}\" x2=\"{left + plotW}\" y1=\"{Y(yv):0.#}\" y2=\"{Y(yv):0.#}\" stroke=\"#e3e3e3\"/>");
            svg.Append(C, $"<text x=\"{left - 6}\" y=\"{Y(yv) + 4:0.#}\" text-anchor=\"end\">{Tick(yv)}</text>");
        }
        foreach (double xv in Ticks(xAxis))
            svg.Append(C, $"<text x=\"{X(xv):0.#}\" y=\"{top + plotH + 16}\" text-anchor=\"middle\">{Tick(xv)}</text>");
        svg.Append(C, $"<text x=\"{left + plotW / 2}\" y=\"{h - 6}\" text-anchor=\"middle\">{E(xLabel)}</text>");
        svg.Append(C, $"<text x=\"14\" y=\"{top + plotH / 2:0}\" transform=\"rotate(-90 14 {top + plotH / 2:0})\" text-anchor=\"middle\">{E(yLabel)}</text>");
        for (int s = 0; s < series.Count; s++)
        {
            string colour = Colours[s % Colours.Length];
            var points = series[s].Points.Where(p => double.IsFinite(p.X) && double.IsFinite(p.Y)).ToList();
            svg.Append(C, $"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{string.Join(' ', points.Select(p => string.Create(C, $"{X(p.X):0.#},{Y(p.Y):0.#}")))}\"/>");
            if (points.Count <= 40)
            {
                foreach (var p in points)
                    svg.Append(C, $"<circle cx=\"{X(p.X):0.#}\" cy=\"{Y(p.Y):0.#}\" r=\"3\" fill=\"{colour}\"><title>{E(series[s].Name)} at {Tick(p.X)}: {p.Y:0.####}</title></circle>");
            }
            svg.Append(C, $"<rect x=\"{w - right + 12}\" y=\"{top + 16 * s}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{w - right + 26}\" y=\"{top + 9 + 16 * s}\">{E(series[s].Name)}</text>");
        }
        return svg.Append("</svg>").ToString();
    }

    /// <summary>
    /// One line per series over shared categories (layers, hook names: labels written slanted);
    /// a null value leaves a gap. The y axis spans <paramref name="yMin"/>..<paramref name="yMax"/>
    /// when given (values outside are drawn at the edge), else scales to the data.
    /// </summary>
    public static string CategoryLines(string title, IReadOnlyList<string> categories, string yLabel,
        IReadOnlyList<(string Name, IReadOnlyList<double?> Values)> series, double? yMin = null, double? yMax = null)
    {
        ArgumentNullException.ThrowIfNull(categories);
        ArgumentNullException.ThrowIfNull(series);
        const int w = 640, h = 360, left = 56, right = 150, top = 36, bottom = 80;
        double plotW = w - left - right, plotH = h - top - bottom;
        var data = series.SelectMany(s => s.Values).OfType<double>().ToList();
        var yAxis = yMin is double lo && yMax is double hi && hi > lo ? (Lo: lo, Hi: hi, Step: (hi - lo) / 4) : Axis(data, false);
        double X(int i) => left + (categories.Count <= 1 ? plotW / 2 : plotW * i / (categories.Count - 1));
        double Y(double v) => top + plotH * (1 - Math.Clamp((v - yAxis.Lo) / (yAxis.Hi - yAxis.Lo), 0, 1));
        var svg = new StringBuilder();
        svg.Append(C, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\" aria-label=\"{E(title)}\">");
        svg.Append(C, $"<text x=\"{w / 2}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{E(title)}</text>");
        foreach (double v in Ticks(yAxis))
            svg.Append(C, $"<line x1=\"{left}\" x2=\"{left + plotW}\" y1=\"{Y(v):0.#}\" y2=\"{Y(v):0.#}\" stroke=\"#ddd\"/><text x=\"{left - 6}\" y=\"{Y(v) + 4:0.#}\" text-anchor=\"end\">{Tick(v)}</text>");
        svg.Append(C, $"<text x=\"14\" y=\"{top + plotH / 2:0}\" transform=\"rotate(-90 14 {top + plotH / 2:0})\" text-anchor=\"middle\">{E(yLabel)}</text>");
        for (int i = 0; i < categories.Count; i++)
            svg.Append(C, $"<text x=\"{X(i):0.#}\" y=\"{top + plotH + 14}\" text-anchor=\"end\" transform=\"rotate(-35 {X(i):0.#} {top + plotH + 14})\">{E(categories[i])}</text>");
        for (int s = 0; s < series.Count; s++)
        {
            string colour = Colours[s % Colours.Length];
            var values = series[s].Values;
            var points = values.Select((v, i) => v is double d && double.IsFinite(d) ? string.Create(C, $"{X(i):0.#},{Y(d):0.#}") : null).OfType<string>();
            svg.Append(C, $"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{string.Join(' ', points)}\"/>");
            for (int i = 0; i < values.Count && i < categories.Count; i++)
            {
                if (values[i] is double d && double.IsFinite(d))
                    svg.Append(C, $"<circle cx=\"{X(i):0.#}\" cy=\"{Y(d):0.#}\" r=\"3\" fill=\"{colour}\"><title>{E(series[s].Name)} {E(categories[i])}: {d:0.###}</title></circle>");
            }
            svg.Append(C, $"<rect x=\"{w - right + 12}\" y=\"{top + 16 * s}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{w - right + 26}\" y=\"{top + 9 + 16 * s}\">{E(series[s].Name)}</text>");
        }
        return svg.Append("</svg>").ToString();
    }

    /// <summary>Vertical bars with their values written on top; the axis starts at zero.</summary>
    public static string Bars(string title, string yLabel, IReadOnlyList<(string Label, double Value)> bars)
    {
        int w = Math.Max(320, 90 + bars.Count * 90), h = 280, left = 60, top = 34, bottom = 50;
        double plotW = w - left - 20, plotH = h - top - bottom;
        double hi = Axis(bars.Select(b => b.Value), true).Hi;
        double slot = plotW / Math.Max(1, bars.Count);
        var svg = new StringBuilder();
        svg.Append(C, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\" role=\"img\" aria-label=\"{E(title)}\">");
        svg.Append(C, $"<text x=\"{w / 2}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{E(title)}</text>");
        svg.Append(C, $"<line x1=\"{left}\" x2=\"{left + plotW}\" y1=\"{top + plotH}\" y2=\"{top + plotH}\" stroke=\"#888\"/>");
        svg.Append(C, $"<text x=\"14\" y=\"{top + plotH / 2:0}\" transform=\"rotate(-90 14 {top + plotH / 2:0})\" text-anchor=\"middle\">{E(yLabel)}</text>");
        for (int i = 0; i < bars.Count; i++)
        {
            double v = Math.Max(0, bars[i].Value), bh = plotH * v / hi, x = left + slot * i + slot * 0.15;
            svg.Append(C, $"<rect x=\"{x:0.#}\" y=\"{top + plotH - bh:0.#}\" width=\"{slot * 0.7:0.#}\" height=\"{Math.Max(bh, 0.5):0.#}\" fill=\"{Colours[i % Colours.Length]}\"><title>{E(bars[i].Label)}: {bars[i].Value:0.####}</title></rect>");
            svg.Append(C, $"<text x=\"{x + slot * 0.35:0.#}\" y=\"{top + plotH - bh - 4:0.#}\" text-anchor=\"middle\">{Tick(bars[i].Value)}</text>");
            svg.Append(C, $"<text x=\"{x + slot * 0.35:0.#}\" y=\"{top + plotH + 16}\" text-anchor=\"middle\">{E(bars[i].Label)}</text>");
        }
        return svg.Append("</svg>").ToString();
    }

    /// <summary>A matrix as coloured cells (white = 0, dark blue = <paramref name="max"/>), with row and column labels.</summary>
    public static string Matrix(string title, IReadOnlyList<string> rows, IReadOnlyList<string> columns, double[,] values, double max, string rowAxis, string columnAxis)
    {
        int cell = Math.Clamp(420 / Math.Max(rows.Count, columns.Count), 8, 36);
        int labelW = 12 + 7 * rows.DefaultIfEmpty("").Max(r => r.Length), labelH = 12 + 6 * columns.DefaultIfEmpty("").Max(c => c.Length);
        int left = labelW + 20, top = 30, w = left + columns.Count * cell + 20, h = top + rows.Count * cell + labelH + 24;
        var svg = new StringBuilder();
        svg.Append(C, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"10\" role=\"img\" aria-label=\"{E(title)}\">");
        svg.Append(C, $"<text x=\"{w / 2}\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">{E(title)}</text>");
        for (int r = 0; r < rows.Count; r++)
        {
            svg.Append(C, $"<text x=\"{left - 4}\" y=\"{top + r * cell + cell / 2 + 3}\" text-anchor=\"end\">{E(rows[r])}</text>");
            for (int c = 0; c < columns.Count; c++)
            {
                double v = Math.Clamp(values[r, c] / max, 0, 1);
                int red = (int)(255 - 207 * v), green = (int)(255 - 175 * v), blue = (int)(255 - 95 * v);
                svg.Append(C, $"<rect x=\"{left + c * cell}\" y=\"{top + r * cell}\" width=\"{cell - 1}\" height=\"{cell - 1}\" fill=\"rgb({red},{green},{blue})\"><title>{E(rows[r])} → {E(columns[c])}: {values[r, c]:0.###}</title></rect>");
            }
        }
        int baseY = top + rows.Count * cell + 6;
        for (int c = 0; c < columns.Count; c++)
        {
            int x = left + c * cell + cell / 2;
            svg.Append(C, $"<text x=\"{x}\" y=\"{baseY}\" text-anchor=\"end\" transform=\"rotate(-60 {x} {baseY})\">{E(columns[c])}</text>");
        }
        svg.Append(C, $"<text x=\"{left + columns.Count * cell / 2}\" y=\"{h - 6}\" text-anchor=\"middle\">{E(columnAxis)}</text>");
        svg.Append(C, $"<text x=\"10\" y=\"{top + rows.Count * cell / 2}\" transform=\"rotate(-90 10 {top + rows.Count * cell / 2})\" text-anchor=\"middle\">{E(rowAxis)}</text>");
        return svg.Append("</svg>").ToString();
    }

    private static string Tick(double v) =>
        v == 0 ? "0" : Math.Abs(v) >= 1000 ? v.ToString("0", C) : Math.Abs(v) >= 10 ? v.ToString("0.#", C) : v.ToString("0.###", C);
}
