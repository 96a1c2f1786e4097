using System.CommandLine;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Generation;

namespace InterpMesh.Cli.Local;

/// <summary>
/// <c>interpmesh generate</c>: greedy or sampled continuation of one prompt. Local mode runs it
/// through the model engine in this process, as the model service would.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create(CliConsole console)
    {
        var options = new ModelOptions();
        var prompt = CliOptions.Text("--prompt", "prompt text", "TEXT");
        var promptIds = CliOptions.IntList("--prompt-ids", "prompt ids, comma-separated");
        var maxNew = CliOptions.Int("--max-new-tokens", "tokens to generate", min: 0);
        maxNew.Required = true;
        var temperature = CliOptions.Real("--temperature", "sampling temperature (0: greedy)", "T");
        var topK = CliOptions.Int("--top-k", "sample among the k likeliest (0: all)", min: 0, helpName: "K");
        var topP = CliOptions.Real("--top-p", "nucleus sampling, in (0, 1]", "P");
        var seed = CliOptions.Int("--seed", "sampling seed", helpName: "S");
        var stopIds = CliOptions.IntList("--stop-ids", "stop ids, comma-separated, or none (default: the model's EOS ids)", none: true);
        var command = options.AddTo(new Command("generate", "Generates from a prompt (greedy or sampled).") { prompt, promptIds, maxNew, temperature, topK, topP, seed, stopIds });
        command.AddRule(r =>
        {
            if (r.Given(prompt) == r.Given(promptIds))
                r.AddError("give exactly one of --prompt \"text\" or --prompt-ids 1,2,3");
        });
        command.SetAction(r =>
        {
            var sampling = new SamplingOptions(Temperature: r.GetValue(temperature) ?? 0, TopK: r.GetValue(topK) ?? 0, TopP: r.GetValue(topP) ?? 1.0, Seed: r.GetValue(seed) ?? 0);
            return Run(options, r, r.GetValue(prompt), r.GetValue(promptIds)?.Values, r.GetValue(maxNew)!.Value, sampling, r.GetValue(stopIds)?.Values, console.Out);
        });
        return command;
    }

    /// <summary><paramref name="stopIds"/>: null for the model's default stop ids, empty for none.</summary>
    private static int Run(ModelOptions options, ParseResult args, string? prompt, int[]? promptIds, int maxNew, SamplingOptions sampling, int[]? stopIds, TextWriter stdout)
    {
        bool json = args.GetValue(options.Json);
        if (options.Remote(args) is { } target)
        {
            var (usedIds, gen, remoteText) = Remote.RemoteModel.Generate(target, prompt, promptIds, maxNew,
                new Contracts.V1.SamplingParameters { Temperature = sampling.Temperature, TopK = sampling.TopK, TopP = sampling.TopP, Seed = sampling.Seed },
                stopIds is { Length: > 0 } ? stopIds : null, noDefaultStop: stopIds is []);
            if (json)
                JsonOutput.Write(stdout, new Dictionary<string, object?> { ["prompt_ids"] = usedIds, ["generated_ids"] = gen, ["text"] = remoteText });
            else
                stdout.WriteLine(remoteText is null ? string.Join(' ', gen) : (prompt ?? "") + remoteText);
            return 0;
        }
        sampling.Validate();
        using var session = options.Open(args);
        var model = session.Model;

        int[] ids = promptIds ?? model.RequireTokenizer().Encode(prompt!);
        if (ids.Length == 0)
            throw new UsageException("the prompt encodes to no tokens; give a non-empty prompt");
        var generated = new List<int>();
        if (maxNew > 0)
        {
            var spec = new GenerateSpec { Prompts = [InputSpec.FromIds(ids)], MaxNewTokens = maxNew, Sampling = sampling, StopIds = stopIds };
            foreach (var output in session.Engine.GenerateAsync(spec).ToBlockingEnumerable())
            {
                if (output is GenerateStep step && step.Ids[0] >= 0)
                    generated.Add(step.Ids[0]);
            }
        }
        string? text = model.Tokenizer?.Decode(generated);
        if (json)
        {
            JsonOutput.Write(stdout, new Dictionary<string, object?>
            {
                ["prompt_ids"] = ids,
                ["generated_ids"] = generated,
                ["text"] = text,
            });
        }
        else
        {
            stdout.WriteLine(text is null ? string.Join(' ', generated) : (prompt ?? "") + text);
        }
        return 0;
    }
}
