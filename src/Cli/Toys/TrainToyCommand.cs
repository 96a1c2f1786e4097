using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Local;
using InterpMesh.Runtime.Execution;
using InterpMesh.ToyModels;
using InterpMesh.ToyModels.Export;
using InterpMesh.ToyModels.Training;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Toys;

/// <summary><c>interpmesh train-toy NAME --out DIR</c>: trains, evaluates, analyses and saves a toy model with its card.</summary>
internal static class TrainToyCommand
{
    public static int Run(string name, CliArgs args, TextWriter stdout, TextWriter stderr)
    {
        bool json = args.Flag("json");
        var task = ToyCatalog.Get(name);
        string output = args.RequireText("out", "the folder to write the model to");
        var d = task.Defaults;
        var options = new TrainingOptions(
            args.Int("steps", min: 1) ?? d.Steps,
            args.Int("batch", min: 1) ?? d.BatchSize,
            args.Real("lr") ?? d.LearningRate,
            args.Int("seed") ?? d.Seed);
        int threads = TorchRuntime.Initialize(args.Int("threads", min: 1));
        args.RejectUnknown("train-toy");
        options.Validate();

        var log = json ? stderr : stdout;
        log.WriteLine($"training '{task.Name}': {options.Steps} steps, batch {options.BatchSize}, lr {options.LearningRate}, seed {options.Seed}, {threads} threads");
        TrainingProgress? last = null;
        var model = ToyTrainer.Train(task, options, p =>
        {
            last = p;
            int width = 30, filled = (int)(width * (double)p.Step / p.Steps);
            log.WriteLine($"  [{new string('#', filled)}{new string('.', width - filled)}] step {p.Step}/{p.Steps}  loss {p.Loss:F4}  lr {p.LearningRate:G3}  {p.Elapsed.TotalSeconds:F0}s");
        });
        using (model)
        {
            using var mode = inference_mode();
            using var scope = NewDisposeScope();
            var metrics = task.Evaluate(model);
            log.WriteLine("evaluating and analysing …");
            var report = task.Analyze(model);
            ModelCard.Save(output, task, model, options, last?.Loss ?? double.NaN, last?.Elapsed ?? TimeSpan.Zero, metrics, report);
            if (json)
            {
                JsonOutput.Write(stdout, new Dictionary<string, object?>
                {
                    ["model"] = task.Name,
                    ["out"] = Path.GetFullPath(output),
                    ["final_loss"] = last?.Loss,
                    ["seconds"] = last?.Elapsed.TotalSeconds,
                    ["metrics"] = metrics.ToDictionary(m => m.Name, m => m.Value),
                    ["findings"] = report.Findings.ToDictionary(m => m.Name, m => m.Value),
                    ["heads"] = report.Heads.Select(h => new { layer = h.Layer, head = h.Head, role = h.Role, score = h.Score }).ToArray(),
                });
            }
            else
            {
                foreach (var m in metrics)
                    stdout.WriteLine($"  {m.Name,-28} {m.Value,7:P1}   (chance {m.Chance:P1})");
                foreach (var h in report.Heads)
                    stdout.WriteLine($"  {h.Role} head {h.Label} (score {h.Score:F2})");
                foreach (var f in report.Findings)
                    stdout.WriteLine($"  {f.Name,-28} {f.Value,7:P1}");
                stdout.WriteLine($"saved to {Path.GetFullPath(output)} (model card: README.md)");
            }
        }
        return 0;
    }
}
