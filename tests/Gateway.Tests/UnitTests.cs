using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Gateway.Artifacts;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Plugins;

namespace InterpMesh.Gateway.Tests;

/// <summary>The SDK's public surface, the parameter validator and the plugin.json reader, without servers.</summary>
public sealed class UnitTests
{
    /// <summary>
    /// Every public type and member of the SDK, one line each, compared with
    /// src/Plugins/Abstractions/PublicAPI.txt. A change to the surface fails here until that file is
    /// updated in the same commit, so reviewers see it. To accept a change, copy the "actual" file
    /// this test writes next to the expected one.
    /// </summary>
    [Fact]
    public void The_sdk_public_surface_is_the_reviewed_one()
    {
        var assembly = typeof(IAnalysisPlugin).Assembly;
        var lines = new List<string>();
        foreach (var type in assembly.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            lines.Add($"type {type.FullName}");
            lines.AddRange(type.GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                .Where(m => m is not MethodInfo { IsSpecialName: true } && !m.Name.Contains('<', StringComparison.Ordinal))
                .Select(m => $"  {m.MemberType} {m}").Order(StringComparer.Ordinal));
        }
        var actual = string.Join('\n', lines) + "\n";
        var path = Path.Combine(RepoPaths.Root, "src", "Plugins", "Abstractions", "PublicAPI.txt");
        var expected = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : "";
        if (actual != expected)
        {
            var written = Path.Combine(Path.GetTempPath(), "PublicAPI.actual.txt");
            File.WriteAllText(written, actual);
            Assert.Fail($"The SDK's public surface changed. Review the difference, then copy {written} to {path}.");
        }
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
