using System.Text.Json;

namespace InterpMesh.Runtime.Tests.Support;

/// <summary>Reads the reference outputs in tests/fixtures.</summary>
internal static class Golden
{
    public sealed record GreedyCase(string Prompt, int[] PromptIds, int[] GeneratedIds, float[][] FirstLogits);

    public static GreedyCase Stories260K()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.Fixture("stories260K/golden-greedy.json")));
        var c = doc.RootElement.GetProperty("cases")[0];
        return new GreedyCase(
            c.GetProperty("prompt").GetString()!,
            c.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            c.GetProperty("generated_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            c.GetProperty("logits_first_positions").EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray());
    }

    public static (int[] Ids, double[][] Logits) Gpt2Tiny()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.Fixture("gpt2-tiny/golden-logits.json")));
        var c = doc.RootElement.GetProperty("cases")[0];
        return (c.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            c.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetDouble()).ToArray()).ToArray());
    }
}
