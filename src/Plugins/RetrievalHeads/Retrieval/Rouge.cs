namespace InterpMesh.Plugins.RetrievalHeads.Retrieval;

/// <summary>
/// ROUGE-1 recall as Wu et al. compute it (Google's <c>rouge_score</c> with <c>use_stemmer=True</c>):
/// text lower-cased, every run of characters other than a–z and 0–9 a separator, words longer than
/// three characters Porter-stemmed (NLTK's <c>PorterStemmer</c>, its default mode), recall = the
/// multiset overlap of the answer's and the reference's words ÷ the reference's word count.
/// </summary>
internal static class Rouge
{
    /// <summary>The words ROUGE-1 compares.</summary>
    public static string[] Tokens(string text, bool stem)
    {
        var words = new List<string>();
        var current = new System.Text.StringBuilder();
        foreach (char raw in text.ToLowerInvariant())
        {
            if (raw is >= 'a' and <= 'z' or >= '0' and <= '9')
            {
                current.Append(raw);
                continue;
            }
            Flush();
        }
        Flush();
        return [.. words];

        void Flush()
        {
            if (current.Length == 0)
                return;
            string w = current.ToString();
            words.Add(stem && w.Length > 3 ? PorterStemmer.Stem(w) : w);
            current.Clear();
        }
    }

    /// <summary>ROUGE-1 recall of <paramref name="answer"/> against <paramref name="reference"/> (0 when the reference has no words).</summary>
    public static double Recall(IReadOnlyList<string> reference, IReadOnlyList<string> answer) =>
        reference.Count == 0 ? 0 : Overlap(reference, answer) / (double)reference.Count;

    /// <summary>ROUGE-1 overlap: how many reference items the answer contains, counted as multisets.</summary>
    public static int Overlap<T>(IEnumerable<T> reference, IEnumerable<T> answer) where T : notnull
    {
        var counts = answer.GroupBy(x => x).ToDictionary(g => g.Key, g => g.Count());
        int overlap = 0;
        foreach (var r in reference)
        {
            if (counts.TryGetValue(r, out int c) && c > 0)
            {
                overlap++;
                counts[r] = c - 1;
            }
        }
        return overlap;
    }
}

/// <summary>
/// The Porter stemmer (Porter 1980, "An algorithm for suffix stripping") with the adjustments of
/// NLTK's default mode, which <c>rouge_score</c> uses: a small pool of irregular forms, words of
/// one or two letters left alone, <c>ies</c>/<c>ied</c> of four-letter words to <c>ie</c>,
/// <c>y → i</c> only after a consonant that is not the first letter, <c>alli</c> first,
/// <c>bli → ble</c>, <c>fulli → ful</c> and <c>logi → log</c>, and a two-letter vowel–consonant
/// stem counting as cvc. Written from the published algorithm and NLTK's documented rules; the
/// test compares it with NLTK on a vocabulary.
/// </summary>
internal static class PorterStemmer
{
    private static readonly Dictionary<string, string> Irregular = new(StringComparer.Ordinal)
    {
        ["sky"] = "sky", ["skies"] = "sky", ["dying"] = "die", ["lying"] = "lie", ["tying"] = "tie", ["news"] = "news",
        ["innings"] = "inning", ["inning"] = "inning", ["outings"] = "outing", ["outing"] = "outing",
        ["cannings"] = "canning", ["canning"] = "canning", ["howe"] = "howe", ["proceed"] = "proceed",
        ["exceed"] = "exceed", ["succeed"] = "succeed",
    };

    public static string Stem(string word)
    {
        string w = word.ToLowerInvariant();
        if (Irregular.TryGetValue(w, out var irregular))
            return irregular;
        if (w.Length <= 2)
            return w;
        w = Step1a(w);
        w = Step1b(w);
        w = Step1c(w);
        w = Step2(w);
        w = Step3(w);
        w = Step4(w);
        w = Step5a(w);
        w = Step5b(w);
        return w;
    }

    private static bool IsConsonant(string w, int i) => w[i] switch
    {
        'a' or 'e' or 'i' or 'o' or 'u' => false,
        'y' => i == 0 || !IsConsonant(w, i - 1),
        _ => true,
    };

    /// <summary>m: the number of vowel–consonant sequences, [C](VC)^m[V].</summary>
    private static int Measure(string stem)
    {
        int m = 0;
        for (int i = 1; i < stem.Length; i++)
        {
            if (IsConsonant(stem, i) && !IsConsonant(stem, i - 1))
                m++;
        }
        return m;
    }

    private static bool ContainsVowel(string stem)
    {
        for (int i = 0; i < stem.Length; i++)
        {
            if (!IsConsonant(stem, i))
                return true;
        }
        return false;
    }

    private static bool EndsDoubleConsonant(string w) => w.Length >= 2 && w[^1] == w[^2] && IsConsonant(w, w.Length - 1);

    private static bool EndsCvc(string w) =>
        w.Length >= 3 && IsConsonant(w, w.Length - 3) && !IsConsonant(w, w.Length - 2) && IsConsonant(w, w.Length - 1) && w[^1] is not ('w' or 'x' or 'y')
        || w.Length == 2 && !IsConsonant(w, 0) && IsConsonant(w, 1);

    private static bool PositiveMeasure(string stem) => Measure(stem) > 0;

    /// <summary>
    /// The first rule whose suffix the word ends with decides: its replacement if the condition
    /// holds for the stem, else the word unchanged. Suffix "*d": a double consonant.
    /// </summary>
    private static string Apply(string w, (string Suffix, string Replacement, Func<string, bool>? Condition)[] rules)
    {
        foreach (var (suffix, replacement, condition) in rules)
        {
            if (suffix == "*d")
            {
                if (!EndsDoubleConsonant(w))
                    continue;
                string s = w[..^2];
                return condition is null || condition(s) ? s + replacement : w;
            }
            if (w.EndsWith(suffix, StringComparison.Ordinal))
            {
                string stem = w[..^suffix.Length];
                return condition is null || condition(stem) ? stem + replacement : w;
            }
        }
        return w;
    }

    private static string Step1a(string w)
    {
        if (w.EndsWith("ies", StringComparison.Ordinal) && w.Length == 4)
            return w[..^3] + "ie";
        return Apply(w, [("sses", "ss", null), ("ies", "i", null), ("ss", "ss", null), ("s", "", null)]);
    }

    private static string Step1b(string w)
    {
        if (w.EndsWith("ied", StringComparison.Ordinal))
            return w[..^3] + (w.Length == 4 ? "ie" : "i");
        if (w.EndsWith("eed", StringComparison.Ordinal))
        {
            string stem = w[..^3];
            return Measure(stem) > 0 ? stem + "ee" : w;
        }
        string? intermediate = null;
        foreach (var suffix in new[] { "ed", "ing" })
        {
            if (w.EndsWith(suffix, StringComparison.Ordinal) && ContainsVowel(w[..^suffix.Length]))
            {
                intermediate = w[..^suffix.Length];
                break;
            }
        }
        if (intermediate is null)
            return w;
        char last = intermediate[^1];
        return Apply(intermediate,
        [
            ("at", "ate", null),
            ("bl", "ble", null),
            ("iz", "ize", null),
            ("*d", last.ToString(), _ => last is not ('l' or 's' or 'z')),
            ("", "e", stem => Measure(stem) == 1 && EndsCvc(stem)),
        ]);
    }

    private static string Step1c(string w) => Apply(w, [("y", "i", stem => stem.Length > 1 && IsConsonant(stem, stem.Length - 1))]);

    private static string Step2(string w)
    {
        if (w.EndsWith("alli", StringComparison.Ordinal) && PositiveMeasure(w[..^4]))
            return Step2(w[..^4] + "al");
        string word = w;
        return Apply(w,
        [
            ("ational", "ate", PositiveMeasure),
            ("tional", "tion", PositiveMeasure),
            ("enci", "ence", PositiveMeasure),
            ("anci", "ance", PositiveMeasure),
            ("izer", "ize", PositiveMeasure),
            ("bli", "ble", PositiveMeasure),
            ("alli", "al", PositiveMeasure),
            ("entli", "ent", PositiveMeasure),
            ("eli", "e", PositiveMeasure),
            ("ousli", "ous", PositiveMeasure),
            ("ization", "ize", PositiveMeasure),
            ("ation", "ate", PositiveMeasure),
            ("ator", "ate", PositiveMeasure),
            ("alism", "al", PositiveMeasure),
            ("iveness", "ive", PositiveMeasure),
            ("fulness", "ful", PositiveMeasure),
            ("ousness", "ous", PositiveMeasure),
            ("aliti", "al", PositiveMeasure),
            ("iviti", "ive", PositiveMeasure),
            ("biliti", "ble", PositiveMeasure),
            ("fulli", "ful", PositiveMeasure),
            // The rule's "l" stays with the stem, so short stems such as "geo" qualify.
            ("logi", "log", _ => PositiveMeasure(word[..^3])),
        ]);
    }

    private static string Step3(string w) => Apply(w,
    [
        ("icate", "ic", PositiveMeasure),
        ("ative", "", PositiveMeasure),
        ("alize", "al", PositiveMeasure),
        ("iciti", "ic", PositiveMeasure),
        ("ical", "ic", PositiveMeasure),
        ("ful", "", PositiveMeasure),
        ("ness", "", PositiveMeasure),
    ]);

    private static string Step4(string w)
    {
        static bool Gt1(string stem) => Measure(stem) > 1;
        return Apply(w,
        [
            ("al", "", Gt1), ("ance", "", Gt1), ("ence", "", Gt1), ("er", "", Gt1), ("ic", "", Gt1), ("able", "", Gt1),
            ("ible", "", Gt1), ("ant", "", Gt1), ("ement", "", Gt1), ("ment", "", Gt1), ("ent", "", Gt1),
            ("ion", "", stem => Measure(stem) > 1 && stem.Length > 0 && stem[^1] is 's' or 't'),
            ("ou", "", Gt1), ("ism", "", Gt1), ("ate", "", Gt1), ("iti", "", Gt1), ("ous", "", Gt1), ("ive", "", Gt1), ("ize", "", Gt1),
        ]);
    }

    private static string Step5a(string w)
    {
        if (!w.EndsWith('e'))
            return w;
        string stem = w[..^1];
        int m = Measure(stem);
        return m > 1 || m == 1 && !EndsCvc(stem) ? stem : w;
    }

    private static string Step5b(string w) => Apply(w, [("ll", "l", _ => Measure(w[..^1]) > 1)]);
}
