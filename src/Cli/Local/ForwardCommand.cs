using System.CommandLine;
using System.Runtime.InteropServices;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Architectures;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Local;

/// <summary>
/// <c>interpmesh forward</c>: logits (or top-k), captures and loss for one sequence of ids. Local
/// mode runs it through the model engine in this process, as the model service would.
/// </summary>
internal static class ForwardCommand
{
    public static Command Create(CliConsole console)
    {
        var options = new ModelOptions();
        var ids = CliOptions.IntList("--ids", "token ids, comma-separated");
        ids.Required = true;
        var logits = CliOptions.Choice("--logits", "logits of every position, the last one, or none (default: all)", "all", "last", "none");
        var topK = CliOptions.Int("--top-k", "the k largest logits per position instead of all", min: 1, helpName: "K");
        var loss = CliOptions.Flag("--loss", "mean next-token loss");
        var capture = CliOptions.Text("--capture", "hook globs, comma-separated (stats per hook; with --json, the values)", "GLOB[,GLOB]");
        var command = options.AddTo(new Command("forward", "One forward: logits, top-k, loss and captured activations.") { ids, logits, topK, loss, capture });
        command.AddRule(r =>
        {
            if (r.GetValue(ids)?.Values is [])
                r.AddError("--ids is empty; give at least one token id");
            else if (r.Given(topK) && r.GetValue(logits) == "none")
                r.AddError("--top-k needs logits; use --logits all or last");
            else if (r.Given(loss) && r.GetValue(ids)?.Values is [_])
                r.AddError("--loss needs at least two ids (it predicts each next id)");
            else if (r.Given(options.Server) && (r.Given(capture) || r.Given(loss) || r.Given(topK) || r.GetValue(logits) == "none"))
                r.AddError("--capture, --loss, --top-k and --logits none are local-mode options (give --model)");
        });
        command.SetAction(r =>
        {
            var mode = r.GetValue(logits) switch { "last" => LogitsMode.Last, "none" => LogitsMode.None, _ => LogitsMode.All };
            string[] hooks = (r.GetValue(capture) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return Run(options, r, r.GetRequiredValue(ids)!.Values, mode, hooks, r.GetValue(loss), r.GetValue(topK) ?? 0, console.Out);
        });
        return command;
    }

    private static int Run(ModelOptions options, ParseResult args, int[] ids, LogitsMode mode, string[] capture, bool loss, int topK, TextWriter stdout)
    {
        bool json = args.GetValue(options.Json);
        if (options.Remote(args) is { } target)
            return Print(stdout, json, ids, mode, new Result(Remote.RemoteModel.Forward(target, ids, mode == LogitsMode.All)));
        using var session = options.Open(args);

        var spec = new RunSpec
        {
            Inputs = [InputSpec.FromIds(ids)],
            Captures = capture.Length == 0 ? [] : [new CaptureSpec { Hooks = capture }],
            Logits = mode,
            TopK = topK,
            Loss = loss,
        };
        var result = new Result(null);
        foreach (var output in session.Engine.RunAsync(spec).ToBlockingEnumerable())
        {
            switch (output)
            {
                case CaptureOutput c:
                    result.Captures.Add((c.Hook, c.Value));
                    break;
                case RunOutcome o:
                    result.Logits = o.Logits is { } l ? Rows(l) : null;
                    result.TopKIds = o.TopKIds is { } ti ? Rows(MemoryMarshal.Cast<byte, long>(ti.Data).ToArray(), ti.Shape) : null;
                    result.TopKValues = o.TopKValues is { } tv ? Rows(tv) : null;
                    result.Loss = o.Loss;
                    break;
            }
        }
        return Print(stdout, json, ids, mode, result);
    }

    private sealed class Result(float[][]? logits)
    {
        public float[][]? Logits { get; set; } = logits;
        public long[][]? TopKIds { get; set; }
        public float[][]? TopKValues { get; set; }
        public double? Loss { get; set; }
        public List<(string Hook, HostTensor Value)> Captures { get; } = [];
    }

    /// <summary>The rows of the first batch entry of a float32 [1, pos, n] tensor.</summary>
    private static float[][] Rows(HostTensor t) => Rows(Flat(t), t.Shape);

    private static T[][] Rows<T>(T[] values, long[] shape)
    {
        int n = (int)shape[^1];
        return Enumerable.Range(0, (int)shape[1]).Select(r => values.AsSpan(r * n, n).ToArray()).ToArray();
    }

    private static int Print(TextWriter stdout, bool json, int[] ids, LogitsMode mode, Result r)
    {
        if (json)
        {
            var doc = new Dictionary<string, object?>();
            if (r.Logits is not null)
                doc["logits"] = r.Logits;
            if (r.TopKIds is not null)
                doc["top_k"] = new Dictionary<string, object> { ["ids"] = r.TopKIds, ["values"] = r.TopKValues! };
            if (r.Loss is { } loss)
                doc["loss"] = loss;
            if (r.Captures.Count > 0)
            {
                doc["captures"] = r.Captures.ToDictionary(c => c.Hook, c => (object)new Dictionary<string, object>
                {
                    ["shape"] = c.Value.Shape,
                    ["dtype"] = c.Value.DType.ToString().ToLowerInvariant(),
                    ["values"] = Flat(c.Value),
                });
            }
            JsonOutput.Write(stdout, doc);
            return 0;
        }
        int first = mode == LogitsMode.All ? 0 : ids.Length - 1;
        if (r.TopKIds is not null)
        {
            for (int p = 0; p < r.TopKIds.Length; p++)
                stdout.WriteLine($"position {first + p} (id {ids[first + p]}): top {r.TopKIds[p].Length} logits " + string.Join("  ", r.TopKIds[p].Zip(r.TopKValues![p]).Select(x => $"{x.First}:{x.Second:F4}")));
        }
        else if (r.Logits is not null)
        {
            for (int p = 0; p < r.Logits.Length; p++)
            {
                var top = r.Logits[p].Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(5);
                stdout.WriteLine($"position {first + p} (id {ids[first + p]}): top logits " + string.Join("  ", top.Select(x => $"{x.i}:{x.v:F4}")));
            }
        }
        foreach (var (hook, value) in r.Captures)
        {
            var v = Flat(value);
            double mean = v.Length == 0 ? 0 : v.Average(x => (double)x);
            double std = v.Length == 0 ? 0 : Math.Sqrt(v.Average(x => (x - mean) * (x - mean)));
            stdout.WriteLine($"{hook} [{string.Join(", ", value.Shape)}]: mean {mean:G5}  std {std:G5}  min {(v.Length == 0 ? 0 : v.Min()):G5}  max {(v.Length == 0 ? 0 : v.Max()):G5}  L2 {Math.Sqrt(v.Sum(x => (double)x * x)):G5}");
        }
        if (r.Loss is { } meanLoss)
            stdout.WriteLine($"mean next-token loss: {meanLoss:F6}");
        return 0;
    }

    /// <summary>A float32 tensor's values, flattened (the engine returns logits and, by default, captures as float32).</summary>
    private static float[] Flat(HostTensor t) => t.DType == ScalarType.Float32
        ? MemoryMarshal.Cast<byte, float>(t.Data).ToArray()
        : throw new InvalidOperationException($"expected float32 values, got {t.DType}");
}
