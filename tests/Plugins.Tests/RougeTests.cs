using System.Diagnostics;
using System.Text.RegularExpressions;
using InterpMesh.Plugins.RetrievalHeads.Retrieval;

namespace InterpMesh.Plugins.Tests;

/// <summary>ROUGE-1 as Wu et al. score recall: rouge_score's tokenizer with NLTK's Porter stemmer.</summary>
public sealed partial class RougeTests
{
    [GeneratedRegex("[a-z]+")]
    private static partial Regex Word();

    [Fact]
    public async Task The_stemmer_equals_nltks_porter_stemmer_on_every_word_of_the_docs()
    {
        // A real English vocabulary without a word list package: every word of this repository's docs,
        // plus the examples of Porter's paper.
        var words = Directory.EnumerateFiles(Path.Combine(RepoPaths.Root, "docs"), "*.md", SearchOption.AllDirectories)
            .Append(Path.Combine(RepoPaths.Root, "README.md"))
            .SelectMany(f => Word().Matches(File.ReadAllText(f).ToLowerInvariant()).Select(m => m.Value))
            .Concat(["caresses", "ponies", "ties", "caress", "cats", "feed", "agreed", "plastered", "bled", "motoring", "sing", "conflated",
                "troubled", "sized", "hopping", "tanned", "falling", "hissing", "fizzed", "failing", "filing", "happy", "sky", "relational",
                "conditional", "rational", "valenci", "hesitanci", "digitizer", "conformabli", "radicalli", "differentli", "vileli",
                "analogousli", "vietnamization", "predication", "operator", "feudalism", "decisiveness", "hopefulness", "callousness",
                "formaliti", "sensitiviti", "sensibiliti", "triplicate", "formative", "formalize", "electriciti", "electrical", "hopeful",
                "goodness", "revival", "allowance", "inference", "airliner", "gyroscopic", "adjustable", "defensible", "irritant",
                "replacement", "adjustment", "dependent", "adoption", "homologou", "communism", "activate", "angulariti", "homologous",
                "effective", "bowdlerize", "probate", "rate", "cease", "controll", "roll", "generalizations", "oscillators", "dying",
                "skies", "died", "tied", "geology", "fully", "hopefully", "generically", "ably", "abilities", "news", "innings", "succeed"])
            .Distinct().Order(StringComparer.Ordinal).ToList();
        Assert.True(words.Count > 2000, $"only {words.Count} words");
        var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(AppContext.BaseDirectory, "python", "porter_stems.py")])
        { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using var py = Process.Start(psi)!;
        var stdout = py.StandardOutput.ReadToEndAsync();
        var stderr = py.StandardError.ReadToEndAsync();
        py.StandardInput.Write(string.Join("\n", words));
        py.StandardInput.Close();
        await py.WaitForExitAsync();
        Assert.True(py.ExitCode == 0, $"NLTK's stemmer did not run (.ci/run installs Debian's python3-nltk): {await stderr}");
        var expected = (await stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(words.Count, expected.Length);
        var wrong = words.Select((w, i) => (Word: w, Nltk: expected[i], Ours: PorterStemmer.Stem(w))).Where(x => x.Nltk != x.Ours).ToList();
        Assert.True(wrong.Count == 0, $"{wrong.Count} of {words.Count} differ, e.g. {string.Join(", ", wrong.Take(10).Select(x => $"{x.Word}: nltk {x.Nltk}, ours {x.Ours}"))}");
    }

    [Fact]
    public void Tokens_and_recall_follow_rouge_score()
    {
        // rouge_score: lower-case, non-alphanumerics separate, words of more than 3 letters stemmed.
        Assert.Equal(["the", "best", "thing", "to", "do", "in", "san", "francisco", "is", "eat", "a", "sandwich"],
            Rouge.Tokens("The best thing to do in San Francisco is eat a sandwich.", stem: true));
        Assert.Equal(["run", "dog", "eat", "3", "appl"], Rouge.Tokens("Running DOGS eat 3 apples!", stem: true));
        Assert.Equal(["running", "dogs"], Rouge.Tokens("Running, dogs", stem: false));
        // Stemming makes "sandwiches" recall "sandwich"; without it, it does not.
        var reference = Rouge.Tokens("eat a sandwich", stem: true);
        Assert.Equal(1.0, Rouge.Recall(reference, Rouge.Tokens("They eat sandwiches in a park", stem: true)));
        Assert.Equal(2 / 3.0, Rouge.Recall(Rouge.Tokens("eat a sandwich", stem: false), Rouge.Tokens("They eat sandwiches in a park", stem: false)), 12);
        // Multiset overlap: a repeated reference word needs two occurrences.
        Assert.Equal(0.5, Rouge.Recall(["a", "a"], ["a", "b"]));
        Assert.Equal(0, Rouge.Recall([], ["a"]));
    }
}
