using System.CommandLine;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Local;
using InterpMesh.Runtime.Execution;
using InterpMesh.ToyModels;
using InterpMesh.ToyModels.Export;
using InterpMesh.ToyModels.Tasks;
using InterpMesh.ToyModels.Training;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Toys;

/// <summary><c>interpmesh train-toy NAME --out DIR</c>: trains, evaluates, analyses and saves a toy model with its card.</summary>
internal static class TrainToyCommand
{
    public static Command Create(CliConsole console)
    {
        var name = new Argument<string>("NAME") { Description = $"a model name: {string.Join(", ", ToyCatalog.Names)}" };
        // The names are offered for completion; ToyCatalog.Get refuses others with the list.
        name.CompletionSources.Add(ToyCatalog.Names.ToArray());
        var output = CliOptions.Text("--out", "the folder to write the model to", "DIR");
        output.Required = true;
        var seed = CliOptions.Int("--seed", "seed (default: the toy's)", helpName: "S");
        var steps = CliOptions.Int("--steps", "training steps (default: the toy's)", min: 1);
        var batch = CliOptions.Int("--batch", "batch size (default: the toy's)", min: 1, helpName: "B");
        var lr = CliOptions.Real("--lr", "learning rate (default: the toy's)", "LR");
        var threads = CliOptions.Int("--threads", "libtorch intra-op threads (default: all cores)", min: 1);
        var json = CliOptions.Flag("--json", "JSON output");
        var command = new Command("train-toy", "Trains a toy model (induction, retrieval, concepts, functions).") { name, output, seed, steps, batch, lr, threads, json };
        command.SetAction(r =>
        {
            var task = ToyCatalog.Get(r.GetRequiredValue(name));
            var d = task.Defaults;
            var options = new TrainingOptions(r.GetValue(steps) ?? d.Steps, r.GetValue(batch) ?? d.BatchSize, r.GetValue(lr) ?? d.LearningRate, r.GetValue(seed) ?? d.Seed);
            return Run(task, options, r.GetRequiredValue(output), r.GetValue(threads), r.GetValue(json), console.Out, console.Error);
        });
        return command;
    }

    private static int Run(ToyTask task, TrainingOptions options, string output, int? threadsArg, bool json, TextWriter stdout, TextWriter stderr)
    {
        int threads = TorchRuntime.Initialize(threadsArg);
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
