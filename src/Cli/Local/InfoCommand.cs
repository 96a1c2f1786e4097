using System.CommandLine;
using InterpMesh.Cli.CommandLine;

namespace InterpMesh.Cli.Local;

/// <summary><c>interpmesh info</c>: dimensions and the hook catalogue.</summary>
internal static class InfoCommand
{
    public static Command Create(CliConsole console)
    {
        var options = new ModelOptions();
        var command = options.AddTo(new Command("info", "Model architecture, dimensions and hooks (local --model or remote --server)."));
        command.SetAction(r => Run(options, r, console.Out));
        return command;
    }

    private static int Run(ModelOptions options, ParseResult args, TextWriter stdout)
    {
        bool json = args.GetValue(options.Json);
        if (options.Remote(args) is { } target)
        {
            var remote = Remote.RemoteModel.Info(target);
            if (json)
                JsonOutput.Write(stdout, remote);
            else
                foreach (var (key, value) in remote.Where(kv => kv.Key is not ("hooks" or "hook_shapes")))
                    stdout.WriteLine($"  {key,-16}{value}");
            return 0;
        }
        using var session = options.Open(args);
        var m = session.Model;
        var c = m.Config;
        var hooks = m.Transformer.Hooks.All;
        if (json)
        {
            JsonOutput.Write(stdout, new Dictionary<string, object?>
            {
                ["architecture"] = c.Architecture,
                ["n_layers"] = c.NLayers,
                ["d_model"] = c.DModel,
                ["n_heads"] = c.NHeads,
                ["n_kv_heads"] = c.NKvHeads,
                ["d_head"] = c.DHead,
                ["d_mlp"] = c.DMlp,
                ["vocab_size"] = c.VocabSize,
                ["context_length"] = c.ContextLength,
                ["dtype"] = m.Transformer.DType.ToString().ToLowerInvariant(),
                ["parameters"] = m.Transformer.Weights.ParameterCount,
                ["bos_token_id"] = m.Tokenizer?.BosId ?? c.BosTokenId,
                ["eos_token_id"] = m.Tokenizer?.EosId ?? c.EosTokenId,
                ["tokenizer"] = m.Tokenizer?.GetType().Name,
                ["hooks"] = hooks.Select(h => h.Name).ToArray(),
                ["hook_shapes"] = hooks.ToDictionary(h => h.Name, h => h.Shape),
            });
            return 0;
        }
        stdout.WriteLine($"{m.Source}");
        stdout.WriteLine($"  architecture    {c.Architecture}");
        stdout.WriteLine($"  layers          {c.NLayers}");
        stdout.WriteLine($"  d_model         {c.DModel}");
        stdout.WriteLine($"  heads           {c.NHeads} (kv heads {c.NKvHeads}, d_head {c.DHead})");
        stdout.WriteLine($"  d_mlp           {c.DMlp}");
        stdout.WriteLine($"  vocabulary      {c.VocabSize}");
        stdout.WriteLine($"  context length  {c.ContextLength}");
        stdout.WriteLine($"  parameters      {m.Transformer.Weights.ParameterCount:N0}");
        stdout.WriteLine($"  tokenizer       {m.Tokenizer?.GetType().Name ?? "(none: pass --tokenizer)"}");
        stdout.WriteLine($"  hooks           {hooks.Count}:");
        int width = hooks.Max(h => h.Name.Length);
        foreach (var h in hooks)
            stdout.WriteLine($"    {h.Name.PadRight(width)}  {h.Shape}");
        return 0;
    }
}
