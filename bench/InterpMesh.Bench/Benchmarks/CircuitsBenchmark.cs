using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.Testing;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench circuits</c> (run from a checkout): the circuits plugin's attribution patching
/// over every head, MLP and residual position (one clean forward with captures, one corrupted forward
/// with gradients, and the baselines) against one plain forward over the same clean + corrupted
/// batch, both in process on the same engine (a random-weights model of a preset's shape with the
/// GPT-2 tokenizer), interleaved; medians. Target: ≤ 3× (nnsight on HF measures about 3.4×).
/// </summary>
internal sealed class CircuitsBenchmark : Benchmark
{
    private readonly Option<string?> presetOption = SharedOptions.Preset("gpt2-small");
    private readonly Option<int> pairsOption = SharedOptions.Int("--pairs", 8, 1, "prompt pairs (the batch is twice this)", "N");
    private readonly Option<int> wordsOption = SharedOptions.Int("--words", 32, 4, "words (one token each) per prompt", "W");
    private readonly Option<int> repeatsOption = SharedOptions.Int("--repeats", 3, 1, "timed repetitions of each side, interleaved", "R");

    private static readonly string[] Words = ["the", " model", " reads", " a", " long", " story", " about", " cats", " and", " dogs", " in", " the", " park", " every", " day", " with", " her", " friends"];

    public CircuitsBenchmark()
        : base("circuits", "Attribution patching (circuits plugin) against one plain forward over the same clean + corrupted batch, in process (run from a checkout).") =>
        Takes(presetOption, pairsOption, wordsOption, repeatsOption);

    public override BenchReport Run(BenchContext context)
    {
        string preset = context.Get(presetOption) ?? "gpt2-small";
        int n = context.Get(pairsOption), words = context.Get(wordsOption), repeats = context.Get(repeatsOption);
        string root = BenchContext.Repository();
        string dir = context.RandomModel(preset);
        // GPT-2's vocabulary: its tokenizer, each word one token with its leading space. A smaller
        // preset (the smoke test's): a word-level tokenizer over the benchmark's words.
        bool gpt2 = InterpMesh.Runtime.Architectures.Presets.Config(preset).VocabSize == 50257;
        if (gpt2)
        {
            foreach (var f in Directory.GetFiles(Path.Combine(root, "models", "gpt2-tokenizer")))
                File.Copy(f, Path.Combine(dir, Path.GetFileName(f)), overwrite: true);
        }
        else
        {
            InterpMesh.Runtime.Tokenization.WordLevelTokenizer.Create(["<unk>", "<bos>", .. Words.Select(w => w.Trim()).Distinct()], "<unk>", "<bos>", null, addsBos: true)
                .Save(Path.Combine(dir, "tokenizer.json"));
        }
        string Join(IEnumerable<string> ws) => gpt2 ? string.Concat(ws) : string.Join(' ', ws.Select(w => w.Trim()));
        using var model = TestModel.Load(dir, threads: context.Threads);

        var rng = new Random(1);
        var pairs = new List<object>();
        for (int i = 0; i < n; i++)
        {
            var clean = Enumerable.Range(0, words).Select(w => w == 0 ? Words[0] : Words[1 + rng.Next(Words.Length - 1)]).ToArray();
            var corrupted = (string[])clean.Clone();
            int at = words / 2;
            corrupted[at] = corrupted[at] == " cats" ? " dogs" : " cats";
            pairs.Add(new { clean = Join(clean), corrupted = Join(corrupted), answer = gpt2 ? " park" : "park", wrong = gpt2 ? " day" : "day" });
        }
        string parameters = JsonSerializer.Serialize(new { mode = "attribution_patching", pairs });
        var texts = pairs.Select(p => JsonSerializer.SerializeToElement(p)).SelectMany(p => new[] { p.GetProperty("clean").GetString()!, p.GetProperty("corrupted").GetString()! }).ToList();
        var ids = model.Client.TokenizeAsync(texts).GetAwaiter().GetResult();
        if (ids.Select(t => t.Length).Distinct().Count() != 1)
            throw new InvalidOperationException("the benchmark's prompts tokenize to different lengths");
        var plain = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        foreach (var t in ids)
            plain.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { t } } });

        double Plain()
        {
            var sw = Stopwatch.StartNew();
            Drain(model.Client.RunAsync(plain)).GetAwaiter().GetResult();
            return sw.Elapsed.TotalSeconds;
        }
        double Attribution()
        {
            using var analysis = new TestAnalysisContext(model.Client);
            var sw = Stopwatch.StartNew();
            var result = PluginHarness.RunAsync(new InterpMesh.Plugins.Circuits.CircuitsPlugin(), parameters, analysis).GetAwaiter().GetResult();
            double seconds = sw.Elapsed.TotalSeconds;
            if (!result.Tables.Any(t => t.Name == "attributions"))
                throw new InvalidOperationException("attribution patching returned no attributions");
            return seconds;
        }
        // The model work alone: the two requests the mode makes (the clean prompts with captures of
        // every hook_z, hook_mlp_out and hook_resid_pre; the corrupted prompts with the same captures
        // and the gradient of the logit difference at those hooks), without the plugin around them.
        var info = model.Client.GetInfoAsync().GetAwaiter().GetResult();
        var hooks = Enumerable.Range(0, info.NLayers).SelectMany(l => new[] { $"blocks.{l}.attn.hook_z", $"blocks.{l}.hook_mlp_out", $"blocks.{l}.hook_resid_pre" }).ToList();
        var answers = model.Client.TokenizeAsync([gpt2 ? " park" : "park", gpt2 ? " day" : "day"]).GetAwaiter().GetResult().Select(t => t[^1]).ToArray();
        var source = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last }, Captures = { new Capture { Hooks = { hooks } } } };
        var withGradient = new RunRequest
        {
            Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last },
            Captures = { new Capture { Hooks = { hooks } } },
            Gradient = new GradientRequest
            {
                LogitDifference = new LogitDifference { Correct = { new TokenSet { Ids = { answers[0] } } }, Incorrect = { new TokenSet { Ids = { answers[1] } } } },
                Hooks = { hooks },
            },
        };
        for (int i = 0; i < ids.Count; i++)
            (i % 2 == 0 ? source : withGradient).Inputs.Add(new Input { Tokens = new TokenIds { Ids = { ids[i] } } });
        double ModelWork()
        {
            var sw = Stopwatch.StartNew();
            Drain(model.Client.RunAsync(source)).GetAwaiter().GetResult();
            Drain(model.Client.RunAsync(withGradient)).GetAwaiter().GetResult();
            return sw.Elapsed.TotalSeconds;
        }
        Plain();
        Attribution();
        ModelWork();
        var plainTimes = new List<double>();
        var attributionTimes = new List<double>();
        var modelTimes = new List<double>();
        for (int r = 0; r < repeats; r++)
        {
            plainTimes.Add(Plain());
            attributionTimes.Add(Attribution());
            modelTimes.Add(ModelWork());
        }
        double p = Median(plainTimes), a = Median(attributionTimes);
        return new BenchReport(new Dictionary<string, object?>
        {
            ["preset"] = preset,
            ["threads"] = context.Threads,
            ["batch"] = $"{n} pairs = {2 * n} rows x {ids[0].Length} tokens",
            ["plain_forward_s"] = p,
            ["attribution_patching_s"] = a,
            ["attribution_vs_forward"] = a / p,
            ["model_work_s"] = Median(modelTimes),
            ["model_work_vs_forward"] = Median(modelTimes) / p,
            ["target"] = "<= 3",
            ["plain_forward_times_s"] = string.Join(" ", plainTimes.Select(x => x.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture))),
            ["attribution_times_s"] = string.Join(" ", attributionTimes.Select(x => x.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture))),
        });
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);

    private static async Task Drain(IAsyncEnumerable<InterpMesh.Plugins.RunOutput> outputs)
    {
        await foreach (var o in outputs)
            o.Activation?.Dispose();
    }
}
