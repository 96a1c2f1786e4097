using System.Text.Json;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.Circuits;
using InterpMesh.Plugins.Testing;
using InterpMesh.Runtime.Tokenization;
using InterpMesh.Tests;
using Xunit.Abstractions;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// Direct logit attribution on one checkpoint of each model family (tests/fixtures/families): the
/// final norm's LayerNorm (centring) and RMSNorm branches, grouped-query attention's kv heads,
/// parallel attention, post-norms, Gemma's scaled embeddings and Gemma 2's soft-capped logits all have to add up to the real logit
/// difference of a separate Run.
/// </summary>
public sealed class CircuitsFamilyTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neo")]
    [InlineData("gpt_neox")]
    [InlineData("gptj")]
    [InlineData("llama")]
    [InlineData("mistral")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("olmo2")]
    [InlineData("gemma")]
    [InlineData("gemma3_text")]
    [InlineData("gemma2")]
    public async Task Direct_logit_attribution_sums_to_the_real_logit_difference(string family)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"interpmesh-dla-{family}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string source = RepoPaths.Fixture(Path.Combine("families", family));
            foreach (var f in Directory.GetFiles(source))
                File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            // The fixtures have no tokenizer: words w0..w127, one per id of their 128-token vocabulary.
            WordLevelTokenizer.Create([.. Enumerable.Range(0, 128).Select(i => $"w{i}")], "w0", null, null, addsBos: false).Save(Path.Combine(dir, "tokenizer.json"));
            using var model = TestModel.Load(dir);
            double? cap = JsonDocument.Parse(File.ReadAllText(Path.Combine(source, "config.json"))).RootElement.TryGetProperty("final_logit_softcapping", out var fc) && fc.ValueKind == JsonValueKind.Number ? fc.GetDouble() : null;
            var rng = new Random(family.Length);
            var pairs = Enumerable.Range(0, 3).Select(_ => new
            {
                clean = string.Join(' ', Enumerable.Range(0, 6).Select(_ => $"w{rng.Next(1, 128)}")),
                answer = $"w{rng.Next(1, 64)}",
                wrong = $"w{rng.Next(64, 128)}",
            }).ToList();
            using var context = model.NewContext();
            var result = await PluginHarness.RunAsync(new CircuitsPlugin(), JsonSerializer.Serialize(new { mode = "direct_logit_attribution", pairs }), context);
            var rows = result.Tables.Single(t => t.Name == "dla").Rows;
            double sum = rows.Sum(r => r[4]!.GetValue<double>());

            // Independent: the logit difference of a plain Run of the same prompts.
            double real = 0;
            foreach (var pair in pairs)
            {
                var ids = await model.Client.TokenizeAsync([pair.clean, pair.answer, pair.wrong]);
                var request = new RunRequest { Inputs = { new Input { Tokens = new TokenIds { Ids = { ids[0] } } } }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                RunResult? run = null;
                await foreach (var o in model.Client.RunAsync(request))
                    run = o.Result ?? run;
                var logits = WireTensor.FromProto(run!.Logits, "logits").ToFloat32();
                // Gemma 2 soft-caps its logits (config.json's final_logit_softcapping c: c·tanh(z/c));
                // the decomposition holds for z.
                double Z(float l) => cap is double c ? c * Math.Atanh(l / c) : l;
                real += (Z(logits[ids[1][^1]]) - Z(logits[ids[2][^1]])) / pairs.Count;
            }
            output.WriteLine($"{family}: parts + bias {sum}, real {real}; {result.Summary.ToJsonString()}");
            // Float32 activations summed over ~30 parts: 1e-4 relative to the logits' scale.
            Assert.True(Math.Abs(sum - real) < 1e-4 * Math.Max(1, Math.Abs(real)), $"{family}: parts + bias {sum}, real logit difference {real}");
            Assert.Contains(rows, r => r[1]!.GetValue<string>() == "head" && Math.Abs(r[4]!.GetValue<double>()) > 0);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
