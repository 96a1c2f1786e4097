using System.Xml.Linq;

namespace InterpMesh.Plugins.Tests;

/// <summary>The SDK's one SVG chart module: well-formed, self-contained, every data point drawn, text escaped.</summary>
public sealed class FiguresTests
{
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";

    private static XDocument Parse(string svg)
    {
        var doc = XDocument.Parse(svg);
        Assert.Equal(Svg + "svg", doc.Root!.Name);
        // Self-contained: no scripts, no links to anything.
        Assert.Empty(doc.Descendants(Svg + "script"));
        Assert.DoesNotContain("href", svg, StringComparison.Ordinal);
        return doc;
    }

    [Fact]
    public void Lines_draw_every_point_and_escape_text()
    {
        var doc = Parse(Figures.Lines("Loss <train> & eval", "step", "loss",
            [("train", [(0, 2.0), (10, 1.0), (20, 0.5)]), ("eval \"held out\"", [(0, 2.2), (20, 0.9)])]));
        Assert.Equal(5, doc.Descendants(Svg + "circle").Count());
        Assert.Equal(2, doc.Descendants(Svg + "polyline").Count());
        Assert.Contains(doc.Descendants(Svg + "text"), t => t.Value == "Loss <train> & eval");
        Assert.Contains(doc.Descendants(Svg + "text"), t => t.Value == "eval \"held out\"");
    }

    [Fact]
    public void Category_lines_leave_gaps_for_missing_values_and_keep_a_fixed_range()
    {
        var doc = Parse(Figures.CategoryLines("Accuracy by layer", ["embed", "0", "1", "2"], "accuracy",
            [("resid_post", [0.5, 0.75, null, 1.0]), ("mlp_out", [null, 0.6, 0.7, 0.8])], 0, 1));
        Assert.Equal(6, doc.Descendants(Svg + "circle").Count());
        // A value at the top of the range sits on the top grid line, the bottom one on the bottom.
        var grid = doc.Descendants(Svg + "line").Select(l => double.Parse(l.Attribute("y1")!.Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        var top = doc.Descendants(Svg + "circle").Single(c => c.Element(Svg + "title")!.Value == "resid_post 2: 1");
        Assert.Equal(grid.Min(), double.Parse(top.Attribute("cy")!.Value, System.Globalization.CultureInfo.InvariantCulture), 1);
        Assert.Equal(["0", "0.25", "0.5", "0.75", "1"], doc.Descendants(Svg + "text").Select(t => t.Value).Where(v => v.StartsWith('0') || v == "1").Take(5));
    }

    [Fact]
    public void Bars_and_matrices_draw_one_shape_per_value()
    {
        var bars = Parse(Figures.Bars("Recall", "accuracy", [("none", 0.9), ("top", 0.2), ("random", 0.85)]));
        Assert.Equal(3, bars.Descendants(Svg + "rect").Count());
        double[,] values = { { 0, 0.5, 1 }, { 1, 0, 0.25 } };
        var matrix = Parse(Figures.Matrix("Scores", ["layer 0", "layer 1"], ["0", "1", "2"], values, 1, "layer", "head"));
        var cells = matrix.Descendants(Svg + "rect").ToList();
        Assert.Equal(6, cells.Count);
        // White for 0, the darkest blue for the maximum.
        Assert.Equal("rgb(255,255,255)", cells[0].Attribute("fill")!.Value);
        Assert.Equal("rgb(48,80,160)", cells[2].Attribute("fill")!.Value);
        Assert.Equal("layer 1 → 2: 0.25", cells[5].Element(Svg + "title")!.Value);
    }
}
