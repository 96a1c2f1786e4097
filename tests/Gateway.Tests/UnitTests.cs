using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Artifacts;
using InterpMesh.AnalysisWorker.Configuration;
using InterpMesh.AnalysisWorker.Plugins;
using InterpMesh.AnalysisWorker.Telemetry;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Plugins;

namespace InterpMesh.Gateway.Tests;

/// <summary>The SDK's public surface, the parameter validator and the plugin.json reader, without servers.</summary>
public sealed class UnitTests
{
    /// <summary>
    /// The SDK's public surface is declared in src/Plugins/Abstractions/PublicAPI.Shipped.txt and
    /// PublicAPI.Unshipped.txt, and the public-API analyzers fail the build on anything undeclared.
    /// A second path: every exported type and public member reflection finds is declared there,
    /// and every declared type exists (so the analyzers cannot have been switched off quietly).
    /// </summary>
    [Fact]
    public void The_sdk_public_surface_is_the_declared_one()
    {
        var folder = Path.Combine(RepoPaths.Root, "src", "Plugins", "Abstractions");
        var lines = new[] { "PublicAPI.Shipped.txt", "PublicAPI.Unshipped.txt" }
            .SelectMany(f => File.ReadAllLines(Path.Combine(folder, f)))
            .Where(l => l.Length > 0 && !l.StartsWith('#'))
            .ToList();
        // Shipped APIs a later version removed stay in Shipped and are marked *REMOVED* in Unshipped:
        // they are not part of the surface any more.
        var removed = lines.Where(l => l.StartsWith("*REMOVED*", StringComparison.Ordinal)).Select(l => l["*REMOVED*".Length..]).ToHashSet();
        var declared = lines.Where(l => !l.StartsWith("*REMOVED*", StringComparison.Ordinal) && !removed.Contains(l))
            .Select(l => System.Text.RegularExpressions.Regex.Replace(l, "^((static|override|abstract|virtual|const|readonly) )+", ""))
            .ToList();
        Assert.Contains("InterpMesh.Plugins.PluginManifest.PluginManifest(string! Id, string! Version, string! Description, string! SdkVersion, System.Text.Json.Nodes.JsonObject! ParameterSchema, System.Collections.Generic.IReadOnlyList<string!>! Produces) -> void", removed);
        Assert.Contains("<PackageReference Include=\"Microsoft.CodeAnalysis.PublicApiAnalyzers\"", File.ReadAllText(Path.Combine(folder, "InterpMesh.Plugins.Abstractions.csproj")));
        var assembly = typeof(IAnalysisPlugin).Assembly;
        foreach (var type in assembly.GetExportedTypes())
        {
            string name = Declared(type);
            Assert.True(declared.Contains(name), $"public type {name} is not declared in PublicAPI.*.txt");
            foreach (var member in type.GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                .Where(m => m is MethodInfo { IsSpecialName: false } or PropertyInfo && !m.Name.Contains('<', StringComparison.Ordinal)
                    && !(type.IsDefined(typeof(System.Runtime.CompilerServices.CompilerGeneratedAttribute), false))))
            {
                // Record members the compiler writes (Equals, Deconstruct, <Clone>$ …) are declared too.
                string prefix = $"{name}.{member.Name}";
                Assert.True(declared.Any(d => d.StartsWith(prefix + "(", StringComparison.Ordinal) || d.StartsWith(prefix + "<", StringComparison.Ordinal) || d.StartsWith(prefix + ".get", StringComparison.Ordinal)
                    || d.StartsWith(prefix + ".set", StringComparison.Ordinal) || d.StartsWith(prefix + ".init", StringComparison.Ordinal)),
                    $"public member {prefix} is not declared in PublicAPI.*.txt");
            }
        }
        var exported = assembly.GetExportedTypes().Select(Declared).ToHashSet();
        foreach (var line in declared.Where(d => !d.Contains('(') && !d.Contains(" -> ", StringComparison.Ordinal)))
            Assert.True(exported.Contains(line), $"PublicAPI.*.txt declares {line}, which the SDK does not export");
    }

    /// <summary>A type's name as the public-API files write it (generic parameters by name: <c>AnalysisPlugin&lt;TParameters&gt;</c>).</summary>
    private static string Declared(Type type)
    {
        string name = type.FullName!.Replace('+', '.');
        if (!type.IsGenericTypeDefinition)
            return name;
        return name[..name.IndexOf('`', StringComparison.Ordinal)] + "<" + string.Join(", ", type.GetGenericArguments().Select(a => a.Name)) + ">";
    }

    [Fact]
    public void The_validator_reports_the_errors_of_the_form_a_mode_selects()
    {
        var schema = JsonNode.Parse("""
            {"type": "object", "anyOf": [
              {"type": "object", "additionalProperties": false, "required": ["hook"], "properties": {
                "mode": {"const": "train"}, "hook": {"type": "string"}, "steps": {"type": "integer", "minimum": 1}}},
              {"type": "object", "additionalProperties": false, "required": ["mode", "probe"], "properties": {
                "mode": {"const": "apply"}, "probe": {"type": "string"}}}]}
            """)!.AsObject();
        List<string> Check(string json) => ParameterValidator.Validate(schema, JsonDocument.Parse(json).RootElement);
        Assert.Empty(Check("""{"hook": "h"}"""));                     // the default mode needs no "mode"
        Assert.Empty(Check("""{"mode": "apply", "probe": "p"}"""));
        Assert.Equal(["parameters.probe is required"], Check("""{"mode": "apply"}"""));
        Assert.Equal(["parameters.steps: 0 is below the minimum 1"], Check("""{"mode": "train", "hook": "h", "steps": 0}"""));
        Assert.Equal(["parameters.mode: must be one of [\"train\",\"apply\"]"], Check("""{"mode": "fit"}"""));
        var oneOf = JsonNode.Parse("""{"oneOf": [{"type": "number"}, {"type": "integer"}]}""")!.AsObject();
        Assert.Equal(["parameters: fits 2 of the allowed forms; exactly one is allowed"], ParameterValidator.Validate(oneOf, JsonDocument.Parse("3").RootElement));
        var constant = JsonNode.Parse("""{"const": 3}""")!.AsObject();
        Assert.Equal(["parameters: must be 3"], ParameterValidator.Validate(constant, JsonDocument.Parse("4").RootElement));
    }

    [Fact]
    public void The_validator_reports_every_problem_with_its_path()
    {
        var schema = JsonNode.Parse("""
            {"type":"object","required":["a"],"additionalProperties":false,"properties":{
              "a":{"type":"integer","minimum":1,"maximum":5},
              "b":{"type":"array","items":{"type":"string","enum":["x","y"]}},
              "c":{"type":"object","properties":{"d":{"type":["number","null"]}}}}}
            """)!.AsObject();
        var errors = ParameterValidator.Validate(schema, JsonDocument.Parse("""{"a": 9, "b": ["x", "z", 3], "c": {"d": "no"}, "e": true}""").RootElement);
        Assert.Equal(
            [
                "parameters.a: 9 is above the maximum 5",
                "parameters.b[1]: \"z\" is not one of [\"x\",\"y\"]",
                "parameters.b[2]: expected string, got number 3",
                "parameters.c.d: expected number or null, got string \"no\"",
                "parameters.e is not a known parameter; known: a, b, c",
            ], errors);
        Assert.Equal(["parameters.a is required"], ParameterValidator.Validate(schema, JsonDocument.Parse("{}").RootElement));
        Assert.Empty(ParameterValidator.Validate(schema, JsonDocument.Parse("""{"a": 3, "c": {"d": null}}""").RootElement));
        Assert.Equal(["parameters.a: expected integer, got number 1.5"], ParameterValidator.Validate(schema, JsonDocument.Parse("""{"a": 1.5}""").RootElement));
    }

    [Theory]
    [InlineData("""{"id": "p", "assembly": "P.dll"}""", null)]
    [InlineData("""not json""", "not valid JSON")]
    [InlineData("""["p"]""", "must be a JSON object")]
    [InlineData("""{"assembly": "P.dll"}""", "\"id\" is missing")]
    [InlineData("""{"id": "p"}""", "\"assembly\" is missing")]
    [InlineData("""{"id": "other", "assembly": "P.dll"}""", "must equal the folder name 'p'")]
    [InlineData("""{"id": "p", "assembly": "../../evil.dll"}""", "must be a .dll file name in the plugin folder")]
    [InlineData("""{"id": "p", "assembly": "/usr/lib/evil.dll"}""", "must be a .dll file name in the plugin folder")]
    [InlineData("""{"id": "p", "assembly": 3}""", "\"assembly\" must be a string")]
    [InlineData("""{"id": "P!", "assembly": "P.dll"}""", "must be lower-case letters")]
    public void Plugin_json_is_checked_with_errors_that_say_what_to_fix(string json, string? error)
    {
        var dir = Path.Combine(Path.GetTempPath(), "interpmesh-pj-" + Guid.NewGuid().ToString("N"), "p");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "plugin.json"), json);
        if (error is null)
        {
            Assert.Equal(new PluginFolder("p", "P.dll", null), PluginFolder.Read(dir));
            return;
        }
        var e = Assert.Throws<InvalidDataException>(() => PluginFolder.Read(dir));
        Assert.Contains(error, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_store_swaps_artifacts_atomically_and_refuses_escaping_names()
    {
        var root = Path.Combine(Path.GetTempPath(), "interpmesh-store-" + Guid.NewGuid().ToString("N"));
        var store = new ArtifactStore(root);
        await store.SaveFilesAsync("a/b", new Dictionary<string, byte[]> { ["x.json"] = "1"u8.ToArray() });
        using (var write = store.Begin("a/b", null))
        {
            await using (var f = write.CreateFile("x.json"))
                await f.WriteAsync("2"u8.ToArray());
            // Not committed yet: readers still see the old version.
            Assert.Equal("1", Encoding.UTF8.GetString((await store.LoadFilesAsync("a/b"))["x.json"]));
            await write.CommitAsync();
        }
        Assert.Equal("2", Encoding.UTF8.GetString((await store.LoadFilesAsync("a/b"))["x.json"]));
        using (var abandoned = store.Begin("a/c", null))
        {
            await using var f = abandoned.CreateFile("y.bin");
        }
        Assert.Null(await store.FindAsync("a/c"));
        Assert.Equal(["a/b"], store.List().Select(a => a.Name));
        foreach (var bad in new[] { "..", "../x", "a/../../x", "/abs", "a\\b", "a/./b", "A" })
            Assert.Throws<ArgumentException>(() => store.Begin(bad, null));
        Assert.Throws<ArgumentException>(() => store.Begin("ok", null).CreateFile("../x"));
    }
}
