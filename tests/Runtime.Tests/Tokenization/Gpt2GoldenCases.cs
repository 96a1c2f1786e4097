using System.Text.Json;

namespace InterpMesh.Runtime.Tests.Tokenization;

/// <summary>
/// Reference encodings of GPT-2's tokenizer, produced by an independent implementation
/// (npm gpt-3-encoder) and stored in tests/fixtures/gpt2-tokenizer/golden-tokens.json.
/// </summary>
internal static class Gpt2GoldenCases
{
    public const int EndOfText = 50256;
    public const int VocabSize = 50257;

    private static readonly Lazy<IReadOnlyList<(string Text, int[] Ids)>> Cases = new(Read);

    public static IReadOnlyList<(string Text, int[] Ids)> Load() => Cases.Value;

    public static TheoryData<string, int[]> AsTheoryData()
    {
        var data = new TheoryData<string, int[]>();
        foreach (var (text, ids) in Load())
        {
            data.Add(text, ids);
        }

        return data;
    }

    private static IReadOnlyList<(string Text, int[] Ids)> Read()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(RepoPaths.Fixture("gpt2-tokenizer/golden-tokens.json")));
        return
        [
            .. doc.RootElement.GetProperty("cases").EnumerateArray().Select(c =>
                (c.GetProperty("text").GetString()!, c.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray())),
        ];
    }
}
