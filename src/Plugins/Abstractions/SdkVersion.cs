namespace InterpMesh.Plugins;

/// <summary>The SDK version a plugin is compiled against and the host checks.</summary>
/// <remarks>
/// The host loads a plugin whose <see cref="PluginManifest.SdkVersion"/> has the host's major
/// version and a minor version no newer than the host's. Minor versions only add; a major version
/// change may break plugins.
/// </remarks>
public static class SdkVersion
{
    /// <summary>Major version: plugins built for another major are refused.</summary>
    public const int Major = 1;

    /// <summary>Minor version: the host accepts plugins built for this minor or an older one.</summary>
    public const int Minor = 2;

    /// <summary>"Major.Minor", the value to put in <see cref="PluginManifest.SdkVersion"/>.</summary>
    public const string Current = "1.2";
}
