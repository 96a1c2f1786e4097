using System.Text.Json;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.RetrievalHeads.Retrieval;

namespace InterpMesh.Plugins.Tests;

/// <summary>Text trials as Wu et al. build them: the answer span located by token-set overlap, ROUGE-1 against the answer.</summary>
public sealed class RetrievalTrialsTests
{
    /// <summary>One token per word (ids by first appearance), no BOS: a tokenizer whose tokens are easy to count.</summary>
    private sealed class WordTokenizer : IModelClient
    {
        private readonly Dictionary<string, int> ids = new(StringComparer.Ordinal);
        private readonly List<string> words = [];

        public string Name => "words";

        public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) => Task.FromResult(new ModelInfo { ContextLength = 400, VocabSize = 1000 });

        public Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<int[]>>([.. texts.Select(t => t.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(Id).ToArray())]);

        private int Id(string w)
        {
            if (!ids.TryGetValue(w, out int id))
            {
                ids[w] = id = words.Count;
                words.Add(w);
            }
            return id;
        }

        public Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<string>>([.. tokens.Select(t => string.Join(' ', t.Select(i => words[i])))]);

        public IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, CancellationToken cancellationToken = default) => throw new NotSupportedException();

        public IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default) => throw new NotSupportedException();
    }

    private static async Task<(List<Trial> Trials, WordTokenizer Model)> Build(object text)
    {
        var model = new WordTokenizer();
        using var p = JsonDocument.Parse(JsonSerializer.Serialize(new { depths = new[] { 50 }, text }));
        return (await Trials.BuildAsync(PluginParameters.Parse<RetrievalHeads.RetrievalHeadsParameters>(p.RootElement), model, await model.GetInfoAsync(), CancellationToken.None), model);
    }

    [Fact]
    public async Task The_scored_span_is_the_answer_not_the_whole_needle()
    {
        var (trials, model) = await Build(new
        {
            needle = "the best thing to do in san francisco is eating sandwiches in dolores park",
            answer = "eating sandwiches in dolores park",
            question = "what is the best thing to do in san francisco ?",
            haystack = "grass grows slowly and rivers run to the sea . ",
            lengths = new[] { 120 },
        });
        var trial = Assert.Single(trials);
        Assert.Equal(5, trial.NeedleEnd - trial.NeedleStart);
        var span = (await model.DetokenizeAsync([trial.Prompt[trial.NeedleStart..trial.NeedleEnd]]))[0];
        Assert.Equal("eating sandwiches in dolores park", span);
        // ROUGE-1 reference words: the answer's, Porter-stemmed (rouge_score with use_stemmer).
        Assert.Equal(["eat", "sandwich", "in", "dolor", "park"], trial.ReferenceWords!);
        Assert.True(trial.Stem);

        // Without an answer the whole needle is scored, as before.
        var (whole, _) = await Build(new { needle = "the code is 7421 ok", question = "what is the code ?", haystack = "grass grows slowly . ", lengths = new[] { 60 } });
        Assert.Equal(5, whole.Single().NeedleEnd - whole.Single().NeedleStart);
    }

    [Fact]
    public void The_answer_is_located_by_token_set_overlap_above_90_percent()
    {
        int[] answer = [.. Enumerable.Range(100, 11)];                       // 11 distinct tokens
        int[] oneChanged = [.. answer[..5], 999, .. answer[6..]];           // 10 of 11 = 0.909 > 0.9: found
        int[] prompt = [1, 2, 3, .. oneChanged, 4, 5];
        Assert.Equal((3, 14), Trials.FuzzyFind(prompt, answer));
        int[] twoChanged = [.. answer[..5], 998, 999, .. answer[7..]];      // 9 of 11 = 0.818: not found
        Assert.Equal((-1, -1), Trials.FuzzyFind([1, 2, 3, .. twoChanged, 4, 5], answer));
        // Exactly 90 % is not enough (the reference's strict ">").
        int[] ten = [.. Enumerable.Range(200, 10)];
        Assert.Equal((-1, -1), Trials.FuzzyFind([.. ten[..9], 7], ten));
        // The first qualifying window wins; order inside the window does not matter (a set).
        Assert.Equal((1, 4), Trials.FuzzyFind([0, 12, 11, 10, 10, 11, 12], [10, 11, 12]));
    }

    [Fact]
    public async Task An_answer_outside_the_needle_is_refused_naming_the_field()
    {
        var e = await Assert.ThrowsAsync<InvalidParametersException>(() => Build(new { needle = "the code is 7421", answer = "8888", question = "code ?", haystack = "grass . ", lengths = new[] { 40 } }));
        Assert.Contains("text.answer '8888' is not part of text.needle", e.Message, StringComparison.Ordinal);
    }
}
