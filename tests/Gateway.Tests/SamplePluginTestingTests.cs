using System.Text.RegularExpressions;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// A third-party plugin tested with the testing package alone: samples/TokenStatsPlugin.Tests
/// builds against the packed SDK and InterpMesh.Plugins.Testing (no project of this repository),
/// loads stories260K in its own process and checks the plugin's numbers against a second
/// computation from the captures, its artifact, progress, logs and its parameter errors.
/// </summary>
public sealed partial class SamplePluginTestingTests
{
    [GeneratedRegex(@"Passed!\s+-\s+Failed:\s+(\d+),\s+Passed:\s+(\d+),\s+Skipped:\s+(\d+)")]
    private static partial Regex Summary();

    [Fact]
    public async Task The_sample_plugins_own_tests_pass_with_the_testing_package_alone()
    {
        string output = await PluginBuilds.SampleTestsOutputAsync();
        var summary = Summary().Match(output);
        Assert.True(summary.Success, $"no passing summary in the sample's test run:\n{output}");
        Assert.Equal("0", summary.Groups[1].Value);
        Assert.Equal("0", summary.Groups[3].Value);
        // The six tests of TokenStatsPluginTests: none may silently disappear.
        Assert.Equal(6, int.Parse(summary.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
    }
}
