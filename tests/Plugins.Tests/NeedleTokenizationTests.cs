using System.Text.Json;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.RetrievalHeads.Retrieval;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// Text trials on a tokenizer whose pieces cross word boundaries (as unigram models without
/// whitespace splitting do): a needle whose tokens merge with the text after it cannot be located,
/// and the retrieval score would be meaningless, so the run is refused saying what to change.
/// </summary>
public sealed class NeedleTokenizationTests
{
    /// <summary>Characters as tokens (id = char code), except "z" followed by a space, which is one token.</summary>
    private sealed class MergingTokenizer : IModelClient
    {
        private const int ZSpace = 1000;

        public string Name => "merging";

        public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) => Task.FromResult(new ModelInfo { ContextLength = 512 });

        public Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<int[]>>([.. texts.Select(Encode)]);

        private static int[] Encode(string text)
        {
            var ids = new List<int>();
            for (int i = 0; i < text.Length; i++)
            {
                if (text[i] == 'z' && i + 1 < text.Length && text[i + 1] == ' ')
                {
                    ids.Add(ZSpace);
                    i++;
                }
                else
                {
                    ids.Add(text[i]);
                }
            }
            return [.. ids];
        }

        public Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<string>>([.. tokens.Select(t => string.Concat(t.Select(id => id == ZSpace ? "z " : ((char)id).ToString())))]);

        public IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, CancellationToken cancellationToken = default) => throw new NotSupportedException("trials are built without forward passes");

        public IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default) => throw new NotSupportedException("trials are built without generation");
    }

    private static async Task<List<Trial>> Build(string needle)
    {
        var model = new MergingTokenizer();
        using var p = JsonDocument.Parse(JsonSerializer.Serialize(new
        {
            depths = new[] { 50 },
            text = new { needle, question = "what is the secret?", haystack = "the grass is green and the sky is blue. ", lengths = new[] { 200 } },
        }));
        return await Trials.BuildAsync(PluginParameters.Parse<RetrievalHeads.RetrievalHeadsParameters>(p.RootElement), model, await model.GetInfoAsync(), CancellationToken.None);
    }

    [Fact]
    public async Task A_needle_whose_last_token_merges_with_the_next_word_is_refused_with_what_to_change()
    {
        var e = await Assert.ThrowsAsync<InvalidParametersException>(() => Build("the secret is xyz"));
        Assert.Contains("the needle is not found in the tokenized context (length 200, depth 50%): its tokens merge with the text around it", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_same_needle_ending_in_punctuation_is_located_exactly()
    {
        var trial = Assert.Single(await Build("the secret is xyz."));
        string located = string.Concat(trial.Prompt[trial.NeedleStart..trial.NeedleEnd].Select(id => (char)id));
        Assert.Equal("the secret is xyz.", located);
    }
}
