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
    public static int Run(CliArgs args, TextWriter stdout)
    {
        bool json = args.Flag("json");
        string? prompt = args.Text("prompt");
        int[]? promptIds = args.IntList("prompt-ids");
        if ((prompt is null) == (promptIds is null))
            throw new UsageException("give exactly one of --prompt \"text\" or --prompt-ids 1,2,3");
        int maxNew = args.Int("max-new-tokens", min: 0) ?? throw new UsageException("--max-new-tokens is required");
        var sampling = new SamplingOptions(
            Temperature: args.Real("temperature") ?? 0,
            TopK: args.Int("top-k", min: 0) ?? 0,
            TopP: args.Real("top-p") ?? 1.0,
            Seed: args.Int("seed") ?? 0);
        string? stopText = args.Text("stop-ids");
        if (args.Text("server") is { } server)
        {
            var target = Remote.RemoteModel.Target(server, args);
            args.RejectUnknown("generate");
            var (usedIds, gen, remoteText) = Remote.RemoteModel.Generate(target, prompt, promptIds, maxNew,
                new Contracts.V1.SamplingParameters { Temperature = sampling.Temperature, TopK = sampling.TopK, TopP = sampling.TopP, Seed = sampling.Seed },
                stopText is null or "none" ? null : ParseIds(stopText), noDefaultStop: stopText == "none");
            if (json)
                JsonOutput.Write(stdout, new Dictionary<string, object?> { ["prompt_ids"] = usedIds, ["generated_ids"] = gen, ["text"] = remoteText });
            else
                stdout.WriteLine(remoteText is null ? string.Join(' ', gen) : (prompt ?? "") + remoteText);
            return 0;
        }
        sampling.Validate();
        using var session = LocalSession.Open(args);
        args.RejectUnknown("generate");
        var model = session.Model;

        int[] ids = promptIds ?? model.RequireTokenizer().Encode(prompt!);
        if (ids.Length == 0)
            throw new UsageException("the prompt encodes to no tokens; give a non-empty prompt");
        IReadOnlyList<int>? stopIds = stopText switch
        {
            // null: the engine's default, the tokenizer's EOS and every eos_token_id of the config.
            null => null,
            "none" => [],
            _ => ParseIds(stopText),
        };

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

    private static int[] ParseIds(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        return parts.Select(p => int.TryParse(p, out int v) ? v : throw new UsageException($"--stop-ids must be comma-separated integers or 'none'; '{p}' is not an integer")).ToArray();
    }
}
