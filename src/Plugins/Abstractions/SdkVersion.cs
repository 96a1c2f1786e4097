namespace InterpMesh.Plugins;

/// <summary>The SDK version a plugin is compiled against and the host checks.</summary>
/// <remarks>
/// The host loads a plugin whose <see cref="PluginManifest.SdkVersion"/> has the host's major
/// version and a minor version no newer than the host's. Minor versions only add; a major version
/// change may break plugins. The host also refuses a plugin whose assembly references another
/// major version of InterpMesh.Plugins.Abstractions before running any of its code (a 1.x plugin
/// cannot even build its 2.0 manifest). 2.0 made the positional records classes with init
/// properties: see docs/writing-plugins.md, "Migrating to 2.0". 2.1 added
/// <see cref="IModelClient.GetWeightsAsync"/>.
/// </remarks>
public static class SdkVersion
{
    /// <summary>Major version: plugins built for another major are refused.</summary>
    public const int Major = 2;

    /// <summary>Minor version: the host accepts plugins built for this minor or an older one.</summary>
    public const int Minor = 1;

    /// <summary>"Major.Minor", the value to put in <see cref="PluginManifest.SdkVersion"/>.</summary>
    public const string Current = "2.1";
}
