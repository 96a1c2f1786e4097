namespace InterpMesh.Plugins.Circuits;

internal static class AttributionPatching
{
    public static Task RunAsync(AttributionPatchingParameters p, IAnalysisContext context, Report report) =>
        throw new InvalidParametersException("attribution_patching is not available yet");
}
