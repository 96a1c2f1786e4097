using System.Diagnostics.Metrics;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using InterpMesh.Gateway.Configuration;
using InterpMesh.AnalysisWorker.Configuration;
using InterpMesh.AnalysisWorker.Plugins;
using InterpMesh.AnalysisWorker.Telemetry;
using InterpMesh.Gateway.Plugins;
using InterpMesh.Gateway.Telemetry;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// SDK 2.0 replaced the 1.x records' constructors, so a plugin built against 1.x would fail inside
/// its own code with MissingMethodException. The gateway reads the SDK version from the plugin
/// assembly's reference first and says what to do.
/// </summary>
public sealed class SdkMajorVersionTests
{
    private const string Rebuild = "was built against InterpMesh.Plugins.Abstractions 1.2; rebuild it against 2.1 — see docs/writing-plugins.md, Migrating to 2.0";

    private static AssemblyName Sdk(string version) => new($"InterpMesh.Plugins.Abstractions, Version={version}");

    [Fact]
    public void A_plugin_built_against_sdk_1_is_refused_with_what_to_do()
    {
        var e = Assert.Throws<InvalidOperationException>(() => PluginCatalog.CheckSdkReference([Sdk("1.2.0.0")], "Old.dll"));
        Assert.Equal("Old.dll " + Rebuild, e.Message);
    }

    [Fact]
    public void A_plugin_built_against_a_newer_major_is_refused_naming_both_versions()
    {
        var e = Assert.Throws<InvalidOperationException>(() => PluginCatalog.CheckSdkReference([Sdk("3.1.0.0")], "New.dll"));
        Assert.Contains("built against InterpMesh.Plugins.Abstractions 3.1, newer than this worker's 2.1", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("2.0.0.0")]
    [InlineData("2.5.0.0")]
    public void A_plugin_built_against_sdk_2_passes_the_reference_check(string version)
    {
        Assert.Null(Record.Exception(() => PluginCatalog.CheckSdkReference([new AssemblyName("System.Runtime, Version=10.0.0.0"), Sdk(version)], "Ok.dll")));
    }

    [Fact]
    public void A_plugin_folder_whose_assembly_references_sdk_1_2_is_not_loaded_and_says_why()
    {
        string root = TempFolders.Create("interpmesh-sdk-one-");
        try
        {
            var folder = Path.Combine(root, "sdk-one");
            Directory.CreateDirectory(folder);
            File.WriteAllText(Path.Combine(folder, "plugin.json"), """{ "id": "sdk-one", "assembly": "SdkOne.dll" }""");
            File.WriteAllBytes(Path.Combine(folder, "SdkOne.dll"), AssemblyReferencingSdk(new Version(1, 2, 0, 0)));

            var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
            using var catalog = new PluginCatalog(Options.Create(new WorkerOptions { PluginsPath = root }), NullLogger<PluginCatalog>.Instance, new WorkerMetrics(meters));
            var entry = Assert.Single(catalog.All);
            Assert.False(entry.Loaded);
            Assert.Equal("InvalidOperationException: SdkOne.dll " + Rebuild, entry.Error);
        }
        finally
        {
            TempFolders.Delete(root);
        }
    }

    [Theory]
    [InlineData(typeof(InterpMesh.Plugins.PluginManifest))]
    [InlineData(typeof(InterpMesh.Plugins.RunOutput))]
    [InlineData(typeof(InterpMesh.Plugins.StoredArtifact))]
    [InlineData(typeof(InterpMesh.Plugins.StoredFile))]
    [InlineData(typeof(InterpMesh.Plugins.ResultTable))]
    [InlineData(typeof(InterpMesh.Plugins.ResultFigure))]
    public void The_sdk_2_data_types_are_sealed_classes_set_through_init_properties(Type type)
    {
        Assert.True(type.IsSealed, $"{type.Name} is not sealed");
        // No positional constructor, no record members: adding a property later breaks no caller.
        Assert.All(type.GetConstructors(), c => Assert.Empty(c.GetParameters()));
        Assert.Null(type.GetMethod("<Clone>$"));
        Assert.Null(type.GetMethod("Deconstruct"));
        Assert.Null(type.GetMethod("op_Equality"));
        var settable = type.GetProperties().Where(p => p.SetMethod is not null).ToList();
        Assert.NotEmpty(settable);
        Assert.All(settable, p => Assert.Contains(typeof(System.Runtime.CompilerServices.IsExternalInit), p.SetMethod!.ReturnParameter.GetRequiredCustomModifiers()));
    }

    /// <summary>
    /// A library whose one public class implements IAnalysisPlugin from InterpMesh.Plugins.Abstractions
    /// of <paramref name="sdk"/>: what a 1.x plugin's metadata says, written directly (no 1.x SDK is
    /// needed to build one).
    /// </summary>
    private static byte[] AssemblyReferencingSdk(Version sdk)
    {
        var md = new MetadataBuilder();
        md.AddModule(0, md.GetOrAddString("SdkOne.dll"), md.GetOrAddGuid(Guid.NewGuid()), default, default);
        md.AddAssembly(md.GetOrAddString("SdkOne"), new Version(1, 0, 0, 0), default, default, default, AssemblyHashAlgorithm.Sha1);
        var runtime = md.AddAssemblyReference(md.GetOrAddString("System.Runtime"), new Version(10, 0, 0, 0), default,
            md.GetOrAddBlob(new byte[] { 0xb0, 0x3f, 0x5f, 0x7f, 0x11, 0xd5, 0x0a, 0x3a }), default, default);
        var abstractions = md.AddAssemblyReference(md.GetOrAddString("InterpMesh.Plugins.Abstractions"), sdk, default, default, default, default);
        var obj = md.AddTypeReference(runtime, md.GetOrAddString("System"), md.GetOrAddString("Object"));
        var plugin = md.AddTypeReference(abstractions, md.GetOrAddString("InterpMesh.Plugins"), md.GetOrAddString("IAnalysisPlugin"));
        md.AddTypeDefinition(default, default, md.GetOrAddString("<Module>"), default, MetadataTokens.FieldDefinitionHandle(1), MetadataTokens.MethodDefinitionHandle(1));
        var type = md.AddTypeDefinition(TypeAttributes.Public | TypeAttributes.Sealed | TypeAttributes.Class, md.GetOrAddString("SdkOne"), md.GetOrAddString("OldPlugin"),
            obj, MetadataTokens.FieldDefinitionHandle(1), MetadataTokens.MethodDefinitionHandle(1));
        md.AddInterfaceImplementation(type, plugin);
        var pe = new ManagedPEBuilder(PEHeaderBuilder.CreateLibraryHeader(), new MetadataRootBuilder(md), new BlobBuilder());
        var image = new BlobBuilder();
        pe.Serialize(image);
        return image.ToArray();
    }
}
