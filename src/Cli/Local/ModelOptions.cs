using System.CommandLine;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Cli.Remote;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Local;

/// <summary>
/// The options of the model commands (<c>info</c>, <c>tokenize</c>, <c>generate</c>, <c>forward</c>):
/// a model loaded in this process (<c>--model</c> and its local settings) or a running service
/// (<c>--server</c>, with <c>--key</c> and <c>--model-name</c> through a gateway), and <c>--json</c>.
/// </summary>
internal sealed class ModelOptions
{
    private const string LocalOnly = "--model, --tokenizer, --dtype, --device and --threads load a model here; with --server URL leave them out";

    public Option<string> Model { get; } = CliOptions.Text("--model", "a Hugging Face folder or a llama2.c .bin", "PATH");
    public Option<string> Tokenizer { get; } = CliOptions.Text("--tokenizer", "tokenizer file (default: the one beside the model)", "PATH");
    public Option<ScalarType?> DType { get; } = CliOptions.DType("weight dtype (default: float32)");
    public Option<string> Device { get; } = Devices(CliOptions.Text("--device", "cpu, cuda or cuda:N (CUDA build only)", "cpu|cuda[:N]"));
    public Option<int?> Threads { get; } = CliOptions.Int("--threads", "libtorch intra-op threads", min: 1);
    public Option<string> Server { get; } = CliOptions.Text("--server", "a model service or gateway URL: run remotely instead of --model", "URL");
    public Option<string> Key { get; } = CliOptions.Text("--key", "API key through a gateway (or INTERPMESH_API_KEY)", "KEY");
    public Option<string> ModelName { get; } = CliOptions.Text("--model-name", "the gateway's model (or INTERPMESH_MODEL)", "NAME");
    public Option<bool> Json { get; } = CliOptions.Flag("--json", "JSON output");

    /// <summary>
    /// Adds the options to <paramref name="command"/> with the rule that it runs either here
    /// (<c>--model</c>, or a tokenizer alone when <paramref name="tokenizerSuffices"/>) or on a server.
    /// </summary>
    public Command AddTo(Command command, bool tokenizerSuffices = false)
    {
        string missing = tokenizerSuffices
            ? $"{command.Name} needs --model PATH, --tokenizer PATH or --server URL"
            : "--model is required (a Hugging Face folder or a llama2.c .bin), or give --server URL";
        foreach (var option in new Option[] { Model, Tokenizer, DType, Device, Threads, Server, Key, ModelName, Json })
            command.Options.Add(option);
        command.AddRule(r =>
        {
            bool remote = r.Given(Server);
            if (remote && (r.Given(Model) || r.Given(Tokenizer) || r.Given(DType) || r.Given(Device) || r.Given(Threads)))
                r.AddError(LocalOnly);
            else if (!remote && (r.Given(Key) || r.Given(ModelName)))
                r.AddError("--key and --model-name are for --server URL (a gateway); a local --model needs neither");
            else if (!remote && !r.Given(Model) && !(tokenizerSuffices && r.Given(Tokenizer)))
                r.AddError(missing);
        });
        return command;
    }

    /// <summary>The remote target when <c>--server</c> is given: <c>--key</c> and <c>--model-name</c> default to the settings (<see cref="CliSettings"/>).</summary>
    public RemoteModel.RemoteTarget? Remote(ParseResult r)
    {
        if (r.GetValue(Server) is not { } url)
            return null;
        var settings = CliSettings.Load();
        return new RemoteModel.RemoteTarget(url, r.GetValue(Key) ?? settings.ApiKey, r.GetValue(ModelName) ?? settings.Model);
    }

    /// <summary>Loads <c>--model</c> with <c>--tokenizer</c>, <c>--dtype</c>, <c>--device</c> and <c>--threads</c>.</summary>
    public LocalSession Open(ParseResult r) =>
        LocalSession.Open(r.GetRequiredValue(Model), r.GetValue(Tokenizer), r.GetValue(DType) ?? ScalarType.Float32, r.GetValue(Device) ?? "cpu", r.GetValue(Threads));

    private static Option<string> Devices(Option<string> option)
    {
        option.CompletionSources.Add("cpu", "cuda", "cuda:0");
        return option;
    }
}
