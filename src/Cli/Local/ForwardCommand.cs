using InterpMesh.Cli.CommandLine;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Local;

/// <summary><c>interpmesh forward</c>: logits for one sequence of ids.</summary>
internal static class ForwardCommand
{
    public static int Run(CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        int[] ids = args.IntList("ids") ?? throw new UsageException("--ids 1,2,3 is required");
        if (ids.Length == 0)
            throw new UsageException("--ids is empty; give at least one token id");
        var mode = args.Text("logits") switch
        {
            null or "all" => LogitsMode.All,
            "last" => LogitsMode.Last,
            var other => throw new UsageException($"--logits must be all or last, got '{other}'"),
        };
        float[][] rows;
        if (args.Text("server") is { } server)
        {
            var target = Remote.RemoteModel.Target(server, args);
            args.RejectUnknown("forward");
            rows = Remote.RemoteModel.Forward(target, ids, mode == LogitsMode.All);
            return Print(stdout, json, ids, mode, rows);
        }
        using var session = LocalSession.Open(args);
        args.RejectUnknown("forward");
        var model = session.Model.Transformer;

        rows = session.Worker.Run(() =>
        {
            var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);
            var logits = model.Forward(input, null, HookPlan.Empty, null, mode)!.to(ScalarType.Float32)[0];
            return Enumerable.Range(0, (int)logits.shape[0]).Select(r => logits[r].data<float>().ToArray()).ToArray();
        });
        return Print(stdout, json, ids, mode, rows);
    }

    private static int Print(TextWriter stdout, bool json, int[] ids, LogitsMode mode, float[][] rows)
    {
        if (json)
        {
            JsonOutput.Write(stdout, new Dictionary<string, float[][]> { ["logits"] = rows });
            return 0;
        }
        int first = mode == LogitsMode.All ? 0 : ids.Length - 1;
        for (int r = 0; r < rows.Length; r++)
        {
            var top = rows[r].Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(5);
            stdout.WriteLine($"position {first + r} (id {ids[first + r]}): top logits " + string.Join("  ", top.Select(x => $"{x.i}:{x.v:F4}")));
        }
        return 0;
    }
}
