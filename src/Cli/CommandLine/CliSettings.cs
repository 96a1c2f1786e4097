using System.Text.Json;

namespace InterpMesh.Cli.CommandLine;

/// <summary>
/// Defaults for the gateway commands, resolved the way <c>dotnet</c> tools resolve settings: the
/// command line wins, then environment variables (<c>INTERPMESH_SERVER</c>, <c>INTERPMESH_API_KEY</c>,
/// <c>INTERPMESH_MODEL</c>), then the user's config file — <c>$INTERPMESH_CONFIG</c>, else
/// <c>$XDG_CONFIG_HOME/interpmesh/config.json</c>, else <c>~/.config/interpmesh/config.json</c> —
/// holding <c>{"server": "...", "apiKey": "...", "model": "..."}</c>.
/// </summary>
internal sealed record CliSettings(string? Server, string? ApiKey, string? Model, string ConfigPath, bool ConfigExists)
{
    public static string DefaultConfigPath()
    {
        if (Environment.GetEnvironmentVariable("INTERPMESH_CONFIG") is { Length: > 0 } explicitPath)
            return Path.GetFullPath(explicitPath);
        string baseDir = Environment.GetEnvironmentVariable("XDG_CONFIG_HOME") is { Length: > 0 } xdg
            ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config");
        return Path.Combine(baseDir, "interpmesh", "config.json");
    }

    /// <summary>Environment over config file (the command line is applied by the caller).</summary>
    public static CliSettings Load()
    {
        string path = DefaultConfigPath();
        string? server = null, key = null, model = null;
        bool exists = File.Exists(path);
        if (exists)
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(path));
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw new UsageException($"the config file {path} must hold a JSON object such as {{\"server\": \"http://127.0.0.1:50050\"}}");
                foreach (var p in doc.RootElement.EnumerateObject())
                {
                    if (p.Value.ValueKind != JsonValueKind.String)
                        throw new UsageException($"in the config file {path}, \"{p.Name}\" must be a string");
                    switch (p.Name)
                    {
                        case "server": server = p.Value.GetString(); break;
                        case "apiKey": key = p.Value.GetString(); break;
                        case "model": model = p.Value.GetString(); break;
                        default: throw new UsageException($"the config file {path} has an unknown setting \"{p.Name}\"; settings: server, apiKey, model");
                    }
                }
            }
            catch (JsonException e)
            {
                throw new UsageException($"the config file {path} is not valid JSON ({e.Message})");
            }
        }
        static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : null;
        return new CliSettings(Env("INTERPMESH_SERVER") ?? server, Env("INTERPMESH_API_KEY") ?? key, Env("INTERPMESH_MODEL") ?? model, path, exists);
    }

    /// <summary>Where each effective setting came from, for <c>interpmesh config</c>.</summary>
    public static IEnumerable<(string Name, string Value, string Source)> Describe()
    {
        var s = Load();
        string Source(string env, string? value) =>
            value is null ? "not set" : Environment.GetEnvironmentVariable(env) is { Length: > 0 } ? $"environment ({env})" : $"config file";
        yield return ("server", s.Server ?? "", Source("INTERPMESH_SERVER", s.Server));
        yield return ("apiKey", s.ApiKey is null ? "" : "(set, " + s.ApiKey.Length + " characters)", Source("INTERPMESH_API_KEY", s.ApiKey));
        yield return ("model", s.Model ?? "", Source("INTERPMESH_MODEL", s.Model));
        yield return ("config file", s.ConfigPath, s.ConfigExists ? "exists" : "absent");
    }
}
