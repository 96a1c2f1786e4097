using System.Collections.Frozen;
using Google.Protobuf.Reflection;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Security;

/// <summary>
/// Role names as keys and configuration write them (<c>read</c>, <c>analyze</c>, <c>admin</c>), for
/// the <see cref="Role"/> enum that authorization.proto defines. Roles nest: admin includes analyze,
/// which includes read.
/// </summary>
public static class RoleNames
{
    private static readonly FrozenDictionary<string, Role> ByName = new Dictionary<string, Role>(StringComparer.Ordinal)
    {
        ["read"] = Role.Read,
        ["analyze"] = Role.Analyze,
        ["admin"] = Role.Admin,
    }.ToFrozenDictionary(StringComparer.Ordinal);

    /// <summary>The names configuration accepts, for error messages.</summary>
    public static string Known => string.Join(", ", ByName.Keys.Order(StringComparer.Ordinal));

    public static bool TryParse(string name, out Role role) => ByName.TryGetValue(name, out role);

    /// <summary>The configuration name of <paramref name="role"/>.</summary>
    public static string Of(Role role) => role switch
    {
        Role.Read => "read",
        Role.Analyze => "analyze",
        Role.Admin => "admin",
        _ => "none",
    };

    /// <summary>The strongest of <paramref name="names"/> (unknown names, which the options validator reports, grant nothing).</summary>
    public static Role Strongest(IEnumerable<string> names) =>
        names.Select(n => TryParse(n, out var r) ? r : Role.Unspecified).DefaultIfEmpty(Role.Unspecified).Max();
}

/// <summary>
/// The role each RPC needs, read once at start from the <c>(interpmesh.v1.required_role)</c> option
/// every RPC declares in the protos: for every service the gateway serves or forwards. Configuration
/// (<c>Gateway:Authorization:Roles:&lt;service&gt;/&lt;method&gt;</c>) may set the role of any RPC,
/// including one the gateway was not compiled with (a ModelService RPC newer than the gateway, which
/// the forwarder would pass on). An RPC with no role from either is refused for every key.
/// </summary>
public sealed class RpcRoles
{
    /// <summary>The services the gateway serves (Analysis, Artifact) or forwards (Model).</summary>
    public static readonly IReadOnlyList<Google.Protobuf.Reflection.ServiceDescriptor> Services =
        [AnalysisService.Descriptor, ArtifactService.Descriptor, Contracts.V1.ModelService.Descriptor];

    private readonly FrozenDictionary<string, Role> roles;

    public RpcRoles(IOptions<GatewayOptions> options)
        : this(options.Value.Authorization.Roles)
    {
    }

    /// <param name="configured">Method (<c>interpmesh.v1.ModelService/Run</c>, a leading '/' optional) to role name; validated at start.</param>
    internal RpcRoles(IReadOnlyDictionary<string, string> configured)
    {
        var all = new Dictionary<string, Role>(StringComparer.Ordinal);
        foreach (var method in Services.SelectMany(s => s.Methods))
        {
            var declared = Declared(method);
            if (declared != Role.Unspecified)
                all[$"/{method.Service.FullName}/{method.Name}"] = declared;
        }
        foreach (var (method, name) in configured)
        {
            if (RoleNames.TryParse(name, out var role))
                all[FullMethod(method)] = role;
        }
        roles = all.ToFrozenDictionary(StringComparer.Ordinal);
        Undeclared = [.. Services.SelectMany(s => s.Methods).Select(m => $"/{m.Service.FullName}/{m.Name}").Where(m => !roles.ContainsKey(m))];
    }

    /// <summary>Methods of <see cref="Services"/> with no role from their proto or configuration: refused for every key (the gateway warns at start).</summary>
    public IReadOnlyList<string> Undeclared { get; }

    /// <summary>The role <paramref name="method"/> declares in its proto, or <see cref="Role.Unspecified"/>.</summary>
    public static Role Declared(MethodDescriptor method) =>
        method.GetOptions()?.GetExtension(AuthorizationExtensions.RequiredRole) ?? Role.Unspecified;

    /// <summary>A configured method name as the gRPC path (<c>/package.Service/Method</c>).</summary>
    public static string FullMethod(string configured) => configured.StartsWith('/') ? configured : "/" + configured;

    /// <summary>The role a call to <paramref name="fullMethod"/> (<c>/package.Service/Method</c>) needs, or null when it declares none.</summary>
    public Role? For(string fullMethod) => roles.TryGetValue(fullMethod, out var role) ? role : null;
}
