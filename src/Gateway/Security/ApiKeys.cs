using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Security;

/// <summary>Who a call comes from, once authenticated, and the strongest role its key holds (roles nest).</summary>
public sealed record Caller(string Name, Role Role)
{
    public const string Anonymous = "anonymous";
    internal const string StateKey = "interpmesh.caller";

    /// <summary>The caller's key name on this call ("anonymous" when auth is off or the call was refused).</summary>
    public static string NameOf(Grpc.Core.ServerCallContext context) =>
        context.UserState.TryGetValue(StateKey, out var c) && c is Caller caller ? caller.Name : Anonymous;

    public static Caller? Of(Grpc.Core.ServerCallContext context) =>
        context.UserState.TryGetValue(StateKey, out var c) ? c as Caller : null;

    /// <summary>Whether the caller may do what <paramref name="needed"/> allows: admin includes analyze, which includes read. Nobody holds <see cref="Role.Unspecified"/>.</summary>
    public bool Has(Role needed) => needed != Role.Unspecified && Role >= needed;
}

/// <summary>
/// The configured API keys, held only as SHA-256 hashes. A presented key is hashed and compared
/// with every stored hash in constant time, so neither timing nor early exit tells an attacker
/// how close a guess was. The keys file (a mounted Secret) is re-read when it changes.
/// </summary>
public sealed class ApiKeys
{
    private readonly AuthOptions options;
    private readonly ILogger<ApiKeys> logger;
    private readonly Lock gate = new();
    private List<(byte[] Hash, Caller Caller)> keys = [];
    private DateTime keysFileStamp;
    private long nextCheck;

    public ApiKeys(IOptions<GatewayOptions> options, ILogger<ApiKeys> logger)
    {
        this.options = options.Value.Auth;
        this.logger = logger;
        Reload();
    }

    public bool Enabled => options.Enabled;

    /// <summary>The caller holding <paramref name="presented"/>, or null.</summary>
    public Caller? Authenticate(string presented)
    {
        if (Environment.TickCount64 >= Interlocked.Read(ref nextCheck))
            Reload();
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(presented));
        Caller? match = null;
        foreach (var (stored, caller) in keys)
        {
            if (CryptographicOperations.FixedTimeEquals(stored, hash))
                match = caller;
        }
        return match;
    }

    private void Reload()
    {
        lock (gate)
        {
            Interlocked.Exchange(ref nextCheck, Environment.TickCount64 + 5000);
            var entries = new List<ApiKeyEntry>(options.Keys);
            if (options.KeysFile is { Length: > 0 } file && File.Exists(file))
            {
                var stamp = LastWriteThroughLinks(file);
                if (stamp == keysFileStamp && keys.Count > 0)
                    return;
                try
                {
                    var fromFile = JsonSerializer.Deserialize<List<ApiKeyEntry>>(File.ReadAllText(file), new JsonSerializerOptions(JsonSerializerDefaults.Web)) ?? [];
                    var bad = fromFile.SelectMany((k, i) => GatewayOptionsValidator.ApiKeyEntryErrors(k, $"{file}[{i}]")).ToList();
                    if (bad.Count > 0)
                        logger.LogError("Ignoring invalid keys in {File}: {Errors}", file, string.Join("; ", bad));
                    entries.AddRange(fromFile.Where(k => !GatewayOptionsValidator.ApiKeyEntryErrors(k, "").Any()));
                    keysFileStamp = stamp;
                }
                catch (Exception e) when (e is JsonException or IOException)
                {
                    logger.LogError("Cannot read the keys file {File}: {Message}; keeping the previous keys", file, e.Message);
                    return;
                }
            }
            keys = [.. entries.Select(k => (Convert.FromHexString(k.Sha256), new Caller(k.Name, RoleNames.Strongest(k.Roles))))];
        }
    }

    /// <summary>
    /// The file's last write, through symbolic links: a Kubernetes Secret volume presents keys.json
    /// as a link (via ..data) whose own timestamp never changes when the kubelet swaps in new keys.
    /// </summary>
    private static DateTime LastWriteThroughLinks(string file)
    {
        var info = new FileInfo(file);
        return (info.ResolveLinkTarget(returnFinalTarget: true) ?? info).LastWriteTimeUtc;
    }
}
