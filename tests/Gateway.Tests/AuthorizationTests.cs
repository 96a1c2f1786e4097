using System.Reflection;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Configuration;
using InterpMesh.Gateway.Security;
using InterpMesh.Routing;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using ServiceDescriptor = Google.Protobuf.Reflection.ServiceDescriptor;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Issue #20, authorization fails closed: every RPC declares its role next to its definition in the
/// protos (<c>option (interpmesh.v1.required_role)</c>), the gateway reads those options from the
/// descriptors, and an RPC without a role is refused for every key unless configuration grants one.
/// </summary>
public sealed class AuthorizationTests
{
    /// <summary>
    /// The role each RPC must need, written here by hand. A new RPC fails
    /// <see cref="Every_rpc_of_every_contract_service_declares_the_role_this_table_expects"/> until it is
    /// added both to its proto (with a role) and to this table.
    /// </summary>
    public static IReadOnlyDictionary<string, Role> Expected { get; } = new Dictionary<string, Role>(StringComparer.Ordinal)
    {
        ["/interpmesh.v1.AnalysisService/ListPlugins"] = Role.Read,
        ["/interpmesh.v1.AnalysisService/DescribePlugin"] = Role.Read,
        ["/interpmesh.v1.AnalysisService/RunAnalysis"] = Role.Analyze,
        ["/interpmesh.v1.AnalysisService/SubmitJob"] = Role.Analyze,
        ["/interpmesh.v1.AnalysisService/GetJob"] = Role.Read,
        ["/interpmesh.v1.AnalysisService/WatchJob"] = Role.Read,
        ["/interpmesh.v1.AnalysisService/CancelJob"] = Role.Analyze,
        ["/interpmesh.v1.AnalysisService/ListJobs"] = Role.Read,
        ["/interpmesh.v1.ArtifactService/ListArtifacts"] = Role.Read,
        ["/interpmesh.v1.ArtifactService/GetArtifact"] = Role.Read,
        ["/interpmesh.v1.ArtifactService/PutArtifact"] = Role.Analyze,
        ["/interpmesh.v1.ArtifactService/DeleteArtifact"] = Role.Admin,
        ["/interpmesh.v1.ModelService/GetModelInfo"] = Role.Read,
        ["/interpmesh.v1.ModelService/Tokenize"] = Role.Read,
        ["/interpmesh.v1.ModelService/Detokenize"] = Role.Read,
        ["/interpmesh.v1.ModelService/GetWeights"] = Role.Read,
        ["/interpmesh.v1.ModelService/Run"] = Role.Analyze,
        ["/interpmesh.v1.ModelService/Generate"] = Role.Analyze,
    };

    /// <summary>Every service the generated contracts define, found by reflection (not a hand-kept list).</summary>
    public static IReadOnlyList<ServiceDescriptor> ContractServices() =>
        [.. typeof(RunRequest).Assembly.GetTypes()
            .Select(t => t.GetProperty("Descriptor", BindingFlags.Public | BindingFlags.Static))
            .Where(p => p?.PropertyType == typeof(ServiceDescriptor))
            .Select(p => (ServiceDescriptor)p!.GetValue(null)!)
            .OrderBy(s => s.FullName, StringComparer.Ordinal)];

    private static AuthInterceptor Interceptor(GatewayOptions options)
    {
        var wrapped = Options.Create(options);
        return new AuthInterceptor(new ApiKeys(wrapped, NullLogger<ApiKeys>.Instance), new RpcRoles(wrapped), wrapped, new ReplicaShare());
    }

    private static GatewayOptions WithKeys(Dictionary<string, string>? roles = null)
    {
        var options = new GatewayOptions
        {
            Auth = new AuthOptions
            {
                Enabled = true,
                Keys =
                [
                    new ApiKeyEntry { Name = "admin", Sha256 = Mesh.Hash(Mesh.AdminKey), Roles = ["admin"] },
                    new ApiKeyEntry { Name = "alice", Sha256 = Mesh.Hash(Mesh.AliceKey), Roles = ["analyze"] },
                    new ApiKeyEntry { Name = "reader", Sha256 = Mesh.Hash(Mesh.ReaderKey), Roles = ["read"] },
                    new ApiKeyEntry { Name = "several", Sha256 = Mesh.Hash("several-key-0123456789"), Roles = ["read", "admin"] },
                ],
            },
        };
        foreach (var (method, role) in roles ?? [])
            options.Authorization.Roles[method] = role;
        return options;
    }

    [Fact]
    public void Every_rpc_of_every_contract_service_declares_the_role_this_table_expects()
    {
        var services = ContractServices();
        // The services the gateway serves or forwards are all of them: none escapes the check.
        Assert.Equal(services.Select(s => s.FullName), RpcRoles.Services.Select(s => s.FullName).Order(StringComparer.Ordinal));
        var declared = services.SelectMany(s => s.Methods).ToDictionary(m => $"/{m.Service.FullName}/{m.Name}", RpcRoles.Declared, StringComparer.Ordinal);
        Assert.Equal(Expected.Keys.Order(StringComparer.Ordinal), declared.Keys.Order(StringComparer.Ordinal));
        foreach (var (method, role) in Expected)
            Assert.True(declared[method] == role, $"{method} declares {declared[method]} in its proto; the table expects {role}");
        // And the gateway's policy, built from those descriptors, needs exactly that role.
        var roles = new RpcRoles(new Dictionary<string, string>());
        foreach (var (method, role) in Expected)
            Assert.Equal(role, roles.For(method));
        Assert.Empty(roles.Undeclared);
    }

    // InlineData, not MemberData: theory data is read at discovery, and loading the contracts assembly then
    // would map it before PluginBuilds packs (and so rebuilds, in place through the build's hard links) it.
    [Theory]
    [InlineData(Mesh.ReaderKey, "/interpmesh.v1.ModelService/Tokenize", true)]
    [InlineData(Mesh.ReaderKey, "/interpmesh.v1.ModelService/Run", false)]
    [InlineData(Mesh.ReaderKey, "/interpmesh.v1.ArtifactService/PutArtifact", false)]
    [InlineData(Mesh.AliceKey, "/interpmesh.v1.ModelService/Run", true)]
    [InlineData(Mesh.AliceKey, "/interpmesh.v1.AnalysisService/ListJobs", true)]
    [InlineData(Mesh.AliceKey, "/interpmesh.v1.ArtifactService/DeleteArtifact", false)]
    [InlineData(Mesh.AdminKey, "/interpmesh.v1.ArtifactService/DeleteArtifact", true)]
    // A key with several roles has the strongest.
    [InlineData("several-key-0123456789", "/interpmesh.v1.ArtifactService/DeleteArtifact", true)]
    public void Roles_nest_admin_over_analyze_over_read(string key, string method, bool allowed)
    {
        using var auth = Interceptor(WithKeys());
        if (allowed)
        {
            Assert.NotNull(auth.Authorize(method, $"Bearer {key}"));
            return;
        }
        var denied = Assert.Throws<RpcException>(() => auth.Authorize(method, $"Bearer {key}"));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Matches($"^key '[a-z]+' lacks the '(analyze|admin)' role needed for {method}$", denied.Status.Detail);
    }

    [Fact]
    public void An_rpc_that_declares_no_role_is_denied_to_every_key_and_with_auth_off()
    {
        const string method = "/interpmesh.v1.ModelService/FutureRpc";
        using var auth = Interceptor(WithKeys());
        foreach (var key in new[] { Mesh.AdminKey, Mesh.AliceKey, Mesh.ReaderKey })
        {
            var denied = Assert.Throws<RpcException>(() => auth.Authorize(method, $"Bearer {key}"));
            Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
            Assert.Equal($"{method} declares no role, so this gateway refuses it; an administrator can grant one with Gateway:Authorization:Roles:interpmesh.v1.ModelService/FutureRpc=read|analyze|admin", denied.Status.Detail);
        }
        // Auth off makes every caller an admin; an RPC with no role stays closed all the same.
        var open = WithKeys();
        open.Auth.Enabled = false;
        using var local = Interceptor(open);
        Assert.Equal(StatusCode.PermissionDenied, Assert.Throws<RpcException>(() => local.Authorize(method, null)).StatusCode);
        Assert.NotNull(local.Authorize("/interpmesh.v1.ArtifactService/DeleteArtifact", null));
        // An unknown key is still told so first: authentication comes before the role.
        Assert.Equal(StatusCode.Unauthenticated, Assert.Throws<RpcException>(() => auth.Authorize(method, "Bearer not-a-key")).StatusCode);
    }

    [Fact]
    public void A_long_unknown_method_is_quoted_shortened()
    {
        string method = "/interpmesh.v1.ModelService/" + new string('X', 5000);
        using var auth = Interceptor(WithKeys());
        var denied = Assert.Throws<RpcException>(() => auth.Authorize(method, $"Bearer {Mesh.AdminKey}"));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.True(denied.Status.Detail.Length < 400, $"the message is {denied.Status.Detail.Length} characters");
        Assert.Contains("declares no role", denied.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void Configuration_grants_a_role_to_an_rpc_the_gateway_lacks_and_can_tighten_a_declared_one()
    {
        var options = WithKeys(new()
        {
            ["interpmesh.v1.ModelService/FutureRpc"] = "analyze",
            ["/interpmesh.v1.ModelService/Tokenize"] = "admin",
        });
        using var auth = Interceptor(options);
        Assert.Equal("alice", auth.Authorize("/interpmesh.v1.ModelService/FutureRpc", $"Bearer {Mesh.AliceKey}").Name);
        Assert.Equal(StatusCode.PermissionDenied, Assert.Throws<RpcException>(() => auth.Authorize("/interpmesh.v1.ModelService/FutureRpc", $"Bearer {Mesh.ReaderKey}")).StatusCode);
        var tightened = Assert.Throws<RpcException>(() => auth.Authorize("/interpmesh.v1.ModelService/Tokenize", $"Bearer {Mesh.AliceKey}"));
        Assert.Contains("lacks the 'admin' role", tightened.Status.Detail, StringComparison.Ordinal);
        // Other methods keep the role their proto declares.
        Assert.Equal("reader", auth.Authorize("/interpmesh.v1.ModelService/Detokenize", $"Bearer {Mesh.ReaderKey}").Name);
    }

    [Fact]
    public void Configured_roles_with_an_unknown_name_or_no_method_are_refused_at_start_saying_what_to_fix()
    {
        var options = WithKeys(new()
        {
            ["interpmesh.v1.ModelService/FutureRpc"] = "write",
            ["FutureRpc"] = "read",
            ["interpmesh.v1.ModelService/"] = "read",
            ["interpmesh.v1.ModelService/Good"] = "analyze",
        });
        options.Models["tiny"] = new ModelRoute { Endpoints = ["http://127.0.0.1:1"] };
        var result = new GatewayOptionsValidator().Validate(null, options);
        Assert.True(result.Failed);
        var failures = result.Failures!.ToList();
        Assert.Contains("Gateway:Authorization:Roles:interpmesh.v1.ModelService/FutureRpc has unknown role 'write'; use admin, analyze, read", failures);
        Assert.Contains("Gateway:Authorization:Roles:FutureRpc does not name a method; use package.Service/Method, e.g. interpmesh.v1.ModelService/Run", failures);
        Assert.Contains("Gateway:Authorization:Roles:interpmesh.v1.ModelService/ does not name a method; use package.Service/Method, e.g. interpmesh.v1.ModelService/Run", failures);
        Assert.Equal(3, failures.Count);
    }
}
