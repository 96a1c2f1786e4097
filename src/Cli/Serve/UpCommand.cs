using System.CommandLine;
using InterpMesh.Cli.CommandLine;
using InterpMesh.ModelService.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Cli.Serve;

/// <summary>
/// <c>interpmesh up</c>: the local mesh in one process — a model service (a bundled toy model by
/// default) and a gateway with the built-in plugins, on loopback — until Ctrl-C.
/// </summary>
internal static class UpCommand
{
    public static Command Create(CliConsole console)
    {
        var bindOption = CliOptions.Text("--bind", "address to listen on", "ADDRESS");
        bindOption.DefaultValueFactory = _ => "127.0.0.1";
        var gatewayPortOption = CliOptions.Int("--grpc-port", "the gateway's port (0: any free port)", defaultValue: 50050, min: 0, helpName: "P");
        var webPortOption = CliOptions.Int("--web-port", "the gateway's HTTP/1.1 port for REST/JSON and gRPC-Web (docs/rest.md; 0: any free port)", defaultValue: 50080, min: 0, helpName: "P");
        var modelPortOption = CliOptions.Int("--model-port", "the model service's port (0: any free port)", defaultValue: 50051, min: 0, helpName: "P");
        var modelOption = CliOptions.Text("--model", "model path (default: the checkout's models/concepts)", "PATH");
        var nameOption = CliOptions.Text("--name", "the model's name at the gateway (default: the model folder's name, or the file's without its extension)", "NAME");
        var pluginsOption = CliOptions.Text("--plugins", "plugins folder (default: the checkout's plugins/)", "DIR");
        var dataOption = CliOptions.Text("--data", "where jobs and artifacts are kept", "DIR");
        dataOption.DefaultValueFactory = _ => "interpmesh-data";
        var keyOption = CliOptions.Text("--key", "require this API key (admin role); auth is off without it", "KEY");
        var threadsOption = CliOptions.Int("--threads", "libtorch intra-op threads (default: all cores)", min: 1);
        // The model service's own settings (docs/modelservice.md), e.g. a small MaxBatch or MaxCaptureBytes
        // for a client's tests of request splitting.
        var settingOption = new Option<Dictionary<string, string?>>("--model-settings")
        {
            Description = "ModelService settings for the model service, comma-separated, e.g. MaxBatch=4,MaxCaptureBytes=1000000 (docs/modelservice.md)",
            HelpName = "NAME=VALUE[,NAME=VALUE]",
            DefaultValueFactory = _ => [],
            CustomParser = ParseSettings,
        };
        var command = new Command("up", "The local mesh: a model service, a gateway and an analysis worker with the built-in plugins, until Ctrl-C.")
            { modelOption, nameOption, gatewayPortOption, webPortOption, modelPortOption, pluginsOption, dataOption, keyOption, bindOption, threadsOption, settingOption };
        command.SetAction(r => Run(r.GetRequiredValue(bindOption), r.GetValue(gatewayPortOption), r.GetValue(webPortOption), r.GetValue(modelPortOption), r.GetValue(modelOption), r.GetValue(nameOption), r.GetValue(pluginsOption),
            Path.GetFullPath(r.GetRequiredValue(dataOption)), r.GetValue(keyOption), r.GetValue(threadsOption) ?? 0, r.GetValue(settingOption) ?? [], console.Out));
        return command;
    }

    /// <summary><c>--model-settings NAME=VALUE,…</c> as <c>ModelService:NAME</c> settings; an item without a name or '=' is refused.</summary>
    private static Dictionary<string, string?> ParseSettings(System.CommandLine.Parsing.ArgumentResult r)
    {
        var settings = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var item in r.Tokens[0].Value.Split(',', StringSplitOptions.TrimEntries))
        {
            int eq = item.IndexOf('=', StringComparison.Ordinal);
            string name = eq < 0 ? "" : item[..eq].Trim();
            if (name.Length == 0 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c == ':'))
            {
                r.AddError($"--model-settings must be NAME=VALUE items, comma-separated, with ModelService setting names such as MaxBatch=4; '{CliOptions.Quote(item)}' is not one");
                return settings;
            }
            settings["ModelService:" + name] = item[(eq + 1)..];
        }
        return settings;
    }

    private static int Run(string bind, int gatewayPort, int webPort, int modelPort, string? modelArg, string? nameArg, string? pluginsArg, string data, string? key, int threads,
        Dictionary<string, string?> modelSettings, TextWriter stdout)
    {
        string? repo = LocalMesh.RepositoryOrNull();
        string model = Path.GetFullPath(modelArg ?? (repo is null ? throw new UsageException("--model PATH is required outside a checkout") : Path.Combine(repo, "models", "concepts")));
        string plugins = Path.GetFullPath(pluginsArg ?? (repo is null ? throw new UsageException("--plugins DIR is required outside a checkout") : Path.Combine(repo, "plugins")));

        string name = nameArg ?? NameOf(model);
        if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
            throw new UsageException($"'{(name.Length > 64 ? name[..64] + "…" : name)}' cannot name a model: use letters, digits, '-', '_' and '.' (--name NAME)");
        var service = LocalMesh.StartModelService(model, threads, $"http://{bind}:{modelPort}", modelSettings);
        var host = service.Services.GetRequiredService<ModelHost>();
        // Local use: auth off unless a key is given (the gateway logs a warning when it is off).
        // REST/JSON and gRPC-Web on an HTTP/1.1 endpoint of their own (the gRPC one is HTTP/2 only).
        if (webPort == 0)
            webPort = LocalMesh.FreePort(bind);
        string web = $"http://{bind}:{webPort}";
        var (gateway, worker) = LocalMesh.StartGateway(new Dictionary<string, string> { [name] = service.Urls.First() }, plugins, data,
            $"http://{bind}:{gatewayPort}", key, logLevel: "Warning",
            extra: new() { ["Kestrel:Endpoints:Web:Url"] = web, ["Kestrel:Endpoints:Web:Protocols"] = "Http1" });
        string g = gateway.Urls.First(u => !u.EndsWith($":{webPort}", StringComparison.Ordinal)), hostPort = g["http://".Length..];
        string bearer = key is null ? "" : " -H \"authorization: Bearer $KEY\"";
        string keyOption = key is null ? "" : " --key $KEY";
        stdout.WriteLine($"up: gateway {g} (model '{name}' from {host.Model!.Source} served at {service.Urls.First()}; an analysis worker runs the plugins from {plugins}; data in {data}); Ctrl-C stops");
        stdout.WriteLine($"  CLI:     interpmesh plugins --server {g}{keyOption}");
        stdout.WriteLine($"           interpmesh run probing --server {g}{keyOption} --params probe.json");
        stdout.WriteLine($"  grpcurl: grpcurl -plaintext {hostPort} list");
        stdout.WriteLine($"           grpcurl -plaintext -d '{{}}' {hostPort} interpmesh.v1.AnalysisService/ListPlugins");
        stdout.WriteLine($"  Python:  mesh = interpmesh.connect(\"{g}\"{(key is null ? "" : ", key=KEY")}) (pip install ./clients/python; docs/python.md)");
        stdout.WriteLine($"  REST:    curl{bearer} -H 'interpmesh-model: {name}' {web}/v1/model/info (docs/rest.md)");
        stdout.WriteLine($"  Console: {web}/ (web console in a browser; enter your API key there; docs/console.md)");
        stdout.Flush();
        var lifetime = gateway.Services.GetRequiredService<IHostApplicationLifetime>();
        using var stopping = lifetime.ApplicationStopping.Register(() =>
        {
            stdout.WriteLine("stopping");
            stdout.Flush();
        });
        gateway.WaitForShutdownAsync().GetAwaiter().GetResult();
        LocalMesh.Stop(gateway, worker, service);
        stdout.WriteLine("stopped");
        return 0;
    }

    /// <summary>A model's default name: its folder's name, or its file's name without the extension (<c>models/concepts</c> → <c>concepts</c>).</summary>
    internal static string NameOf(string modelPath)
    {
        string trimmed = modelPath.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        return Directory.Exists(trimmed) ? Path.GetFileName(trimmed) : Path.GetFileNameWithoutExtension(trimmed);
    }
}
