using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using InterpMesh.AnalysisWorker.Jobs;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace InterpMesh.Plugins.Tests;

/// <summary>Model calls the circuits tests make themselves, through the gateway: the independent side of each comparison.</summary>
internal static class Direct
{
    public static async Task<(Dictionary<string, WireTensor> Captures, RunResult Result)> RunAsync(Grpc.Net.Client.GrpcChannel channel, RunRequest request)
    {
        var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
        using var call = client.Run(request, Mesh.As(Mesh.AliceKey));
        var assembler = new ChunkAssembler();
        var captures = new Dictionary<string, WireTensor>();
        RunResult? result = null;
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            if (m.Result is { } r)
                result = r;
            else if (assembler.Add(m.Activation) is { } a)
                captures[a.Hook] = a.Tensor;
        }
        return (captures, result!);
    }

    public static async Task<Dictionary<string, WireTensor>> WeightsAsync(Grpc.Net.Client.GrpcChannel channel, params string[] names)
    {
        var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
        using var call = client.GetWeights(new GetWeightsRequest { Names = { names } }, Mesh.As(Mesh.AliceKey));
        var assembler = new ChunkAssembler();
        var result = new Dictionary<string, WireTensor>();
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            if (assembler.Add(m.Chunk) is { } a)
                result[a.Hook] = a.Tensor;
        }
        return result;
    }

    public static async Task<int[]> TokensAsync(Grpc.Net.Client.GrpcChannel channel, string text)
    {
        var client = new Contracts.V1.ModelService.ModelServiceClient(channel);
        var response = await client.TokenizeAsync(new TokenizeRequest { Texts = { text } }, Mesh.As(Mesh.AliceKey));
        return [.. response.Tokens[0].Ids];
    }

    public static Input Tokens(int[] ids) => new() { Tokens = new TokenIds { Ids = { ids } } };

    public static List<JsonElement> Rows(Job job, string table) =>
        [.. JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == table).RowsJson).RootElement.EnumerateArray()];
}

/// <summary>
/// The circuits plugin on the "induction" toy, whose card names the previous-token heads (L0H3, L0H1,
/// L0H2) and the induction heads (L1H0–3). Prompt pairs: clean = filler + segment + the segment again up
/// to its fifth token (the answer is the segment's sixth token, which follows the earlier occurrence of
/// the current token); corrupted = the same with the first occurrence changed.
/// </summary>
public sealed class CircuitsInductionTests(InductionMeshFixture mesh, ITestOutputHelper output) : IClassFixture<InductionMeshFixture>
{
    private static string T(int i) => $"t{i:00}";

    /// <summary>
    /// Pairs of 17 tokens (bos, 3 filler, 8-token segment, its first 5 tokens again). whole: the whole first
    /// occurrence replaced by other symbols (nothing earlier predicts the answer); otherwise only the token
    /// before the answer's earlier occurrence (the segment's fifth) is replaced, so the answer still stands
    /// in the first occurrence but no longer follows the current token there.
    /// </summary>
    internal static List<object> Pairs(int n, int seed, bool whole)
    {
        var rng = new Random(seed);
        var pairs = new List<object>();
        for (int i = 0; i < n; i++)
        {
            var symbols = Enumerable.Range(0, 60).OrderBy(_ => rng.Next()).ToArray();
            var filler = symbols[..3];
            var segment = symbols[3..11];
            var other = symbols[11..19];
            int wrong = symbols[19];
            var clean = filler.Concat(segment).Concat(segment[..5]);
            var firstCopy = whole ? other : [.. segment[..4], other[0], .. segment[5..]];
            var corrupted = filler.Concat(firstCopy).Concat(segment[..5]);
            pairs.Add(new { clean = string.Join(' ', clean.Select(T)), corrupted = string.Join(' ', corrupted.Select(T)), answer = T(segment[5]), wrong = T(wrong) });
        }
        return pairs;
    }

    private static double Metric(float[] logits, int answer, int wrong) => (double)logits[answer] - logits[wrong];

    [Fact]
    public async Task Activation_patching_of_heads_singles_out_the_induction_heads_and_matches_an_explicit_patch()
    {
        var pairs = Pairs(8, 1, whole: true);
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "activation_patching", pairs, components = new[] { "heads" } }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var rows = Direct.Rows(job, "effects");
        Assert.Equal(8, rows.Count);
        var effect = rows.ToDictionary(r => $"L{r[2].GetInt32()}H{r[3].GetInt32()}", r => r[7].GetDouble());
        var induction = Card.Heads("induction", "induction");
        double weakestInduction = induction.Min(h => effect[h]);
        double strongestOther = effect.Where(e => !induction.Contains(e.Key)).Max(e => e.Value);
        output.WriteLine($"heads: {JsonSerializer.Serialize(effect)}; summary {job.Result.SummaryJson}");
        // Asserted: every induction head (layer 1) restores more than twice what any layer-0 head does (in
        // absolute value). Measured on these 8 pairs: L1 heads 0.035–0.078 each (they are redundant: each
        // alone restores a small part of the logit difference), layer-0 heads −0.008 to 0.010.
        double largestOther = effect.Where(e => !induction.Contains(e.Key)).Max(e => Math.Abs(e.Value));
        Assert.True(weakestInduction > strongestOther && weakestInduction > 2 * largestOther, $"normalised effects: {JsonSerializer.Serialize(effect)}");
        Assert.Contains(job.Result.Figures, f => f.Name == "heads");

        // Independent: the first pair's L1H2 patched by hand (clean z of head 2 SET into the corrupted run).
        var first = JsonSerializer.SerializeToElement(pairs[0]);
        int[] clean = await Direct.TokensAsync(mesh.Channel, first.GetProperty("clean").GetString()!);
        int[] corrupted = await Direct.TokensAsync(mesh.Channel, first.GetProperty("corrupted").GetString()!);
        int answer = (await Direct.TokensAsync(mesh.Channel, first.GetProperty("answer").GetString()!))[^1];
        int wrong = (await Direct.TokensAsync(mesh.Channel, first.GetProperty("wrong").GetString()!))[^1];
        var (caps, _) = await Direct.RunAsync(mesh.Channel, new RunRequest { Inputs = { Direct.Tokens(clean) }, Captures = { new Capture { Hooks = { "blocks.1.attn.hook_z" } } } });
        var z = caps["blocks.1.attn.hook_z"];
        var patched = new RunRequest { Inputs = { Direct.Tokens(corrupted) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        patched.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.1.attn.hook_z", Op = Contracts.V1.InterventionOp.Set, Heads = { 2 }, Value = z.ToProto() });
        var (_, result) = await Direct.RunAsync(mesh.Channel, patched);
        double byHand = Metric(WireTensor.FromProto(result.Logits, "logits").ToFloat32(), answer, wrong);
        // The same patch through a one-pair job.
        var one = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { pairs = new[] { pairs[0] }, components = new[] { "heads" }, layers = new[] { 1 } }));
        Assert.True(one.State == JobState.Succeeded, one.Error);
        double plugin = Direct.Rows(one, "effects").Single(r => r[3].GetInt32() == 2)[6].GetDouble();
        Assert.True(Math.Abs(plugin - byHand) < 1e-4, $"plugin {plugin}, by hand {byHand}");
    }

    [Fact]
    public async Task Position_sweeps_find_the_answer_s_earlier_occurrence_and_match_explicit_patches()
    {
        var pairs = Pairs(4, 2, whole: true);
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { pairs, components = new[] { "resid_pre", "attn_out", "mlp_out", "heads_by_position", "q", "k", "v", "pattern" } }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var rows = Direct.Rows(job, "effects");
        output.WriteLine($"sweeps: {job.Result.SummaryJson}");
        // 17 positions: resid_pre, attn_out, mlp_out 2 × 17 each; heads_by_position 2 × 4 × 17; q, k, v, pattern 2 × 4 each.
        Assert.Equal(3 * 34 + 136 + 4 * 8, rows.Count);
        foreach (var f in new[] { "resid_pre", "attn_out", "mlp_out", "heads_by_position", "q", "k", "v", "pattern" })
            Assert.Contains(job.Result.Figures, x => x.Name == f);
        JsonElement Row(string component, int layer, int position) => rows.Single(r => r[0].GetString() == component && r[2].GetInt32() == layer && r[4].GetInt32() == position);
        // Layer 1 reads the answer from its earlier occurrence (position 9 = bos + 3 filler + 5): the clean residual
        // there restores the answer (measured 0.99), more than at any other position; layer 1's attention output at
        // the last position carries it (measured 0.9997).
        var layer1 = rows.Where(r => r[0].GetString() == "resid_pre" && r[2].GetInt32() == 1).OrderByDescending(r => r[7].GetDouble()).ToList();
        Assert.Equal(9, layer1[0][4].GetInt32());
        Assert.True(layer1[0][7].GetDouble() > 0.9 && Row("attn_out", 1, 16)[7].GetDouble() > 0.9, $"resid_pre L1 @9 {layer1[0][7]}, attn_out L1 @16 {Row("attn_out", 1, 16)[7]}");

        // Independent: blocks.1.hook_resid_pre at position 9 patched by hand for every pair, the metric averaged.
        double byHand = 0;
        foreach (var pair in pairs.Select(x => JsonSerializer.SerializeToElement(x)))
        {
            int[] clean = await Direct.TokensAsync(mesh.Channel, pair.GetProperty("clean").GetString()!);
            int[] corrupted = await Direct.TokensAsync(mesh.Channel, pair.GetProperty("corrupted").GetString()!);
            int answer = (await Direct.TokensAsync(mesh.Channel, pair.GetProperty("answer").GetString()!))[^1];
            int wrong = (await Direct.TokensAsync(mesh.Channel, pair.GetProperty("wrong").GetString()!))[^1];
            var (caps, _) = await Direct.RunAsync(mesh.Channel, new RunRequest { Inputs = { Direct.Tokens(clean) }, Captures = { new Capture { Hooks = { "blocks.1.hook_resid_pre" } } } });
            var patched = new RunRequest { Inputs = { Direct.Tokens(corrupted) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            patched.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.1.hook_resid_pre", Op = Contracts.V1.InterventionOp.Set, Positions = { 9 }, Value = caps["blocks.1.hook_resid_pre"].ToProto() });
            var (_, result) = await Direct.RunAsync(mesh.Channel, patched);
            byHand += Metric(WireTensor.FromProto(result.Logits, "logits").ToFloat32(), answer, wrong) / pairs.Count;
        }
        Assert.True(Math.Abs(byHand - Row("resid_pre", 1, 9)[6].GetDouble()) < 1e-4, $"plugin {Row("resid_pre", 1, 9)[6]}, by hand {byHand}");
    }

    [Fact]
    public async Task Path_patching_shows_the_previous_token_heads_reaching_the_induction_heads_through_their_keys()
    {
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new
        {
            mode = "path_patching",
            pairs = Pairs(8, 3, whole: false),
            receivers = Enumerable.Range(0, 4).Select(h => new { layer = 1, head = h }),
            receiver_inputs = new[] { "q", "k", "v" },
        }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var rows = Direct.Rows(job, "path_effects");
        Assert.Equal(4 * 3, rows.Count);
        var previous = Card.Heads("induction", "previous-token");
        double Total(string input) => rows.Where(r => previous.Contains(r[0].GetString()!) && r[3].GetString() == input).Sum(r => r[5].GetDouble());
        double k = Total("k"), q = Total("q"), v = Total("v");
        output.WriteLine($"path: k {k} q {q} v {v}; {job.Result.Tables.Single(t => t.Name == "path_effects").RowsJson}; {job.Result.SummaryJson}");
        // Asserted: through k the previous-token heads restore at least 0.3 of the gap, and over 5 times what they restore through q or v.
        Assert.True(k > 0.3 && k > 5 * Math.Abs(q) && k > 5 * Math.Abs(v), $"previous-token heads → induction heads: k {k}, q {q}, v {v}; rows {job.Result.Tables.Single(t => t.Name == "path_effects").RowsJson}");
    }

    [Fact]
    public async Task Noising_and_the_final_residual_receiver_match_explicit_interventions()
    {
        var pair = Pairs(1, 7, whole: true)[0];
        var first = JsonSerializer.SerializeToElement(pair);
        int[] clean = await Direct.TokensAsync(mesh.Channel, first.GetProperty("clean").GetString()!);
        int[] corrupted = await Direct.TokensAsync(mesh.Channel, first.GetProperty("corrupted").GetString()!);
        int answer = (await Direct.TokensAsync(mesh.Channel, first.GetProperty("answer").GetString()!))[^1];
        int wrong = (await Direct.TokensAsync(mesh.Channel, first.GetProperty("wrong").GetString()!))[^1];
        var hooks = new[] { "blocks.*.attn.hook_z", "blocks.*.hook_mlp_out" };
        var (cleanActs, _) = await Direct.RunAsync(mesh.Channel, new RunRequest { Inputs = { Direct.Tokens(clean) }, Captures = { new Capture { Hooks = { hooks } } } });
        var (corruptActs, _) = await Direct.RunAsync(mesh.Channel, new RunRequest { Inputs = { Direct.Tokens(corrupted) }, Captures = { new Capture { Hooks = { hooks } } } });
        async Task<double> MetricAsync(int[] tokens, params Contracts.V1.Intervention[] interventions)
        {
            var request = new RunRequest { Inputs = { Direct.Tokens(tokens) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            request.Interventions.AddRange(interventions);
            var (_, result) = await Direct.RunAsync(mesh.Channel, request);
            return Metric(WireTensor.FromProto(result.Logits, "logits").ToFloat32(), answer, wrong);
        }
        Contracts.V1.Intervention Set(string hook, WireTensor value, params int[] heads) =>
            new() { Hook = hook, Op = Contracts.V1.InterventionOp.Set, Value = value.ToProto(), Heads = { heads } };

        // Noising: the corrupted z of L0H3 SET into the clean run.
        var noising = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { pairs = new[] { pair }, direction = "noising", layers = new[] { 0 } }));
        Assert.True(noising.State == JobState.Succeeded, noising.Error);
        double plugin = Direct.Rows(noising, "effects").Single(r => r[3].GetInt32() == 3)[6].GetDouble();
        double byHand = await MetricAsync(clean, Set("blocks.0.attn.hook_z", corruptActs["blocks.0.attn.hook_z"], 3));
        Assert.True(Math.Abs(plugin - byHand) < 1e-4, $"noising L0H3: plugin {plugin}, by hand {byHand}");

        // Path patching to the final residual: L0H1's clean z with every head and MLP frozen at the corrupted run.
        var path = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "path_patching", pairs = new[] { pair }, receiver_inputs = new[] { "resid" }, senders = new[] { new { layer = 0, head = 1 } } }));
        Assert.True(path.State == JobState.Succeeded, path.Error);
        double pluginPath = Direct.Rows(path, "path_effects").Single()[4].GetDouble();
        var frozen = new List<Contracts.V1.Intervention>();
        for (int l = 0; l < 2; l++)
        {
            var z = corruptActs[$"blocks.{l}.attn.hook_z"];
            frozen.Add(Set($"blocks.{l}.attn.hook_z", l == 0 ? Mixed(z, cleanActs["blocks.0.attn.hook_z"], head: 1) : z));
            frozen.Add(Set($"blocks.{l}.hook_mlp_out", corruptActs[$"blocks.{l}.hook_mlp_out"]));
        }
        double byHandPath = await MetricAsync(corrupted, [.. frozen]);
        Assert.True(Math.Abs(pluginPath - byHandPath) < 1e-4, $"L0H1 → resid: plugin {pluginPath}, by hand {byHandPath}");
        // Frozen MLPs and heads make it differ from plain patching of L0H1 (which also reaches layer 1).
        double plain = await MetricAsync(corrupted, Set("blocks.0.attn.hook_z", cleanActs["blocks.0.attn.hook_z"], 1));
        output.WriteLine($"noising L0H3 {plugin}; L0H1 → resid {pluginPath}, plain patch {plain}");
    }

    /// <summary>z [1, pos, head, d_head] of <paramref name="into"/> with one head's values from <paramref name="from"/>.</summary>
    private static WireTensor Mixed(WireTensor into, WireTensor from, int head)
    {
        var a = into.ToFloat32();
        var b = from.ToFloat32();
        long heads = into.Shape[2], dHead = into.Shape[3];
        for (long i = 0; i < a.Length; i++)
        {
            if ((i / dHead) % heads == head)
                a[i] = b[i];
        }
        return WireTensor.FromFloat32(a, [.. into.Shape]);
    }

    [Fact]
    public async Task The_logit_lens_last_layer_equals_the_model_s_logits()
    {
        var pairs = Pairs(2, 4, whole: true);
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "logit_lens", pairs, top_k = 3, save_as = "circuits/lens-test" }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var rows = Direct.Rows(job, "logit_lens");
        Assert.Equal(2 * 3 * 17, rows.Count);

        // Independent: the model's own logits for pair 0 (a separate Run), against the saved lens logits of the last layer.
        var first = JsonSerializer.SerializeToElement(pairs[0]);
        int[] clean = await Direct.TokensAsync(mesh.Channel, first.GetProperty("clean").GetString()!);
        int answer = (await Direct.TokensAsync(mesh.Channel, first.GetProperty("answer").GetString()!))[^1];
        var (_, result) = await Direct.RunAsync(mesh.Channel, new RunRequest { Inputs = { Direct.Tokens(clean) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.All } });
        var real = WireTensor.FromProto(result.Logits, "logits").ToFloat32();
        int vocab = real.Length / clean.Length;
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        var saved = await store.LoadTensorsAsync("circuits/lens-test");
        try
        {
            var lens = saved["pair0.last_position_logits"].data<float>().ToArray();
            Assert.Equal(3 * vocab, lens.Length);
            double maxDiff = Enumerable.Range(0, vocab).Max(i => Math.Abs(lens[2 * vocab + i] - real[(clean.Length - 1) * vocab + i]));
            output.WriteLine($"lens: max diff {maxDiff}; {job.Result.SummaryJson}; {string.Join("\n", rows.Where(r => r[0].GetInt32() == 0 && r[3].GetInt32() == 16))}");
            Assert.True(maxDiff <= 1e-4, $"last-layer lens vs the model's logits: max |diff| {maxDiff}");
            // The embeddings' lens differs from the model (else the lens would be trivial).
            double embedDiff = Enumerable.Range(0, vocab).Max(i => Math.Abs(lens[i] - real[(clean.Length - 1) * vocab + i]));
            Assert.True(embedDiff > 0.1, $"embeddings' lens vs the logits: {embedDiff}");
        }
        finally
        {
            foreach (var t in saved.Values)
                t.Dispose();
        }
        // Every position of the last layer: the answer's probability is the softmax of the model's logits.
        foreach (var r in rows.Where(r => r[0].GetInt32() == 0 && r[1].GetInt32() == 1))
        {
            int pos = r[3].GetInt32();
            var row = real.AsSpan(pos * vocab, vocab).ToArray();
            double max = row.Max(), p = Math.Exp(row[answer] - max) / row.Sum(x => Math.Exp(x - max));
            Assert.True(Math.Abs(p - r[9].GetDouble()) < 1e-5, $"position {pos}: lens {r[9]}, model {p}");
        }
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.True(summary["last_layer_max_abs_diff"]!.GetValue<double>() <= 1e-4);

        // Chosen positions run only the prefix up to the last one (causal): same numbers as the full lens.
        var some = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "logit_lens", pairs = new[] { pairs[0] }, top_k = 3, positions = new[] { 9, -8 } }));
        Assert.True(some.State == JobState.Succeeded, some.Error);
        var chosen = Direct.Rows(some, "logit_lens");
        Assert.Equal(3 * 1, chosen.Count);
        foreach (var r in chosen)
        {
            var full = rows.Single(x => x[0].GetInt32() == 0 && x[1].GetInt32() == r[1].GetInt32() && x[3].GetInt32() == 9);
            Assert.Equal(full[6].GetString(), r[6].GetString());
            Assert.True(Math.Abs(full[9].GetDouble() - r[9].GetDouble()) < 1e-5, $"layer {r[1]}: {full[9]} vs {r[9]}");
        }
    }

    [Fact]
    public async Task Direct_logit_attribution_sums_to_the_logit_difference()
    {
        var pairs = Pairs(4, 5, whole: true);
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "direct_logit_attribution", pairs }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var parts = Direct.Rows(job, "dla");
        double sum = parts.Sum(r => r[4].GetDouble());

        // Independent: the real logit difference from a separate Run of the clean prompts.
        double real = 0;
        var head = new Dictionary<int, double>();
        foreach (var pair in pairs.Select(x => JsonSerializer.SerializeToElement(x)))
        {
            int[] clean = await Direct.TokensAsync(mesh.Channel, pair.GetProperty("clean").GetString()!);
            int answer = (await Direct.TokensAsync(mesh.Channel, pair.GetProperty("answer").GetString()!))[^1];
            int wrong = (await Direct.TokensAsync(mesh.Channel, pair.GetProperty("wrong").GetString()!))[^1];
            var (_, result) = await Direct.RunAsync(mesh.Channel, new RunRequest { Inputs = { Direct.Tokens(clean) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } });
            real += Metric(WireTensor.FromProto(result.Logits, "logits").ToFloat32(), answer, wrong) / pairs.Count;
        }
        output.WriteLine($"dla: parts {sum} real {real}; {job.Result.SummaryJson}; {job.Result.Tables.Single(t => t.Name == "dla").RowsJson}");
        Assert.True(Math.Abs(sum - real) < 1e-4, $"parts + bias {sum}, real logit difference {real}");
        // The induction heads carry most of the direct effect (the card: they copy the answer).
        var induction = Card.Heads("induction", "induction");
        double inductionShare = parts.Where(r => induction.Contains(r[0].GetString()!)).Sum(r => r[4].GetDouble());
        Assert.True(inductionShare > 0.5 * real, $"induction heads' direct share {inductionShare} of {real}");
    }

    [Theory]
    [InlineData("""{"pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02", "answer": "t04", "wrong": "t05"}]}""", "pairs[0]: clean has 4 tokens, corrupted 3")]
    [InlineData("""{"pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02 t09", "answer": "t04 t05", "wrong": "t05"}]}""", "pairs[0].answer \"t04 t05\" is 2 tokens")]
    [InlineData("""{"pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02 t09", "answer": "t04", "wrong": "t05"}], "layers": [2]}""", "layers[0]: layer 2 is out of range; this model has layers 0..1")]
    [InlineData("""{"pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02 t09", "answer": "t04", "wrong": "t05"}, {"clean": "t01 t02", "corrupted": "t01 t09", "answer": "t04", "wrong": "t05"}], "components": ["resid_pre"]}""", "pairs[1]: 3 tokens, but pairs[0] has 4")]
    [InlineData("""{"mode": "path_patching", "pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02 t09", "answer": "t04", "wrong": "t05"}], "receivers": [{"layer": 1, "head": 4}]}""", "receivers[0].head: 4 is out of range")]
    [InlineData("""{"mode": "path_patching", "pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02 t09", "answer": "t04", "wrong": "t05"}], "receivers": [{"layer": 1, "head": 0}], "senders": [{"layer": 1, "head": 1}]}""", "senders[0]: L1H1 is not below any receiver")]
    [InlineData("""{"mode": "logit_lens", "pairs": [{"clean": "t01 t02 t03", "answer": "t04"}], "positions": [9]}""", "positions[0]: 9 is outside pairs[0].clean's 4 tokens")]
    [InlineData("""{"pairs": [{"clean": "t01 t02 t03", "corrupted": "t01 t02 t09", "answer": "t04"}]}""", "pairs[0].wrong is missing")]
    [InlineData("""{"pairs_artifact": "circuits/none"}""", "pairs_artifact: there is no artifact 'circuits/none'")]
    public async Task Bad_input_fails_the_job_as_invalid_argument_naming_the_field(string parameters, string message)
    {
        var job = await mesh.RunAsync("circuits", parameters);
        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("INVALID_ARGUMENT", job.ErrorCode);
        Assert.Contains(message, job.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Pairs_can_come_from_a_jsonl_artifact()
    {
        var pairs = Pairs(3, 6, whole: true);
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        var jsonl = string.Join('\n', pairs.Select(p => JsonSerializer.Serialize(p)));
        await store.SaveFilesAsync("datasets/induction-pairs", new Dictionary<string, byte[]> { ["pairs.jsonl"] = Encoding.UTF8.GetBytes(jsonl) });
        var fromArtifact = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { pairs_artifact = "datasets/induction-pairs", layers = new[] { 1 } }));
        var inline = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { pairs, layers = new[] { 1 } }));
        Assert.True(fromArtifact.State == JobState.Succeeded, fromArtifact.Error);
        Assert.Equal(Direct.Rows(inline, "effects").Select(r => r[6].GetDouble()), Direct.Rows(fromArtifact, "effects").Select(r => r[6].GetDouble()));
        Assert.Equal(3, JsonNode.Parse(fromArtifact.Result.SummaryJson)!["pairs"]!.GetValue<int>());
    }
}

/// <summary>
/// The circuits plugin on the "functions" toy: patching heads from in-context prompts into the same
/// prompts with shuffled labels (the function-vector test's prompts) locates the heads that carry the
/// function, checked by patching them by hand.
/// </summary>
public sealed class CircuitsFunctionsTests(FunctionsMeshFixture mesh, ITestOutputHelper output) : IClassFixture<FunctionsMeshFixture>
{
    private static string X(int i) => $"x{((i % 24) + 24) % 24:D2}";

    [Fact]
    public async Task Activation_patching_of_heads_locates_the_heads_that_carry_the_function()
    {
        // The function-vector test's prompts (seed 5, shift 5): in-context prompts, the same with shuffled labels.
        var rng = new Random(5);
        const int shift = 5;
        var pairs = new List<(string Clean, string Corrupted, string Answer, string Wrong)>();
        for (int n = 0; n < 16; n++)
        {
            var xs = Enumerable.Range(0, 5).Select(_ => rng.Next(24)).ToArray();
            int query = rng.Next(24);
            pairs.Add((string.Join(' ', xs.Select(x => $"{X(x)} {X(x + shift)}")) + $" {X(query)}",
                string.Join(' ', xs.Select(x => $"{X(x)} {X(rng.Next(24))}")) + $" {X(query)}", X(query + shift), X(query + 1)));
        }
        var job = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { pairs = pairs.Select(p => new { clean = p.Clean, corrupted = p.Corrupted, answer = p.Answer, wrong = p.Wrong }), components = new[] { "heads" }, metric = "prob" }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var ranked = Direct.Rows(job, "effects").OrderByDescending(r => r[7].GetDouble()).Select(r => (Layer: r[2].GetInt32(), Head: r[3].GetInt32(), Effect: r[7].GetDouble())).ToList();
        output.WriteLine($"ranking: {string.Join(", ", ranked.Select(r => $"L{r.Layer}H{r.Head} {r.Effect:0.###}"))}; {job.Result.SummaryJson}");

        // Independent: patch the plugin's top 2 heads together by hand (clean z SET into the shuffled prompt), and the other 6 together.
        double clean = 0, corrupt = 0, top = 0, rest = 0;
        foreach (var pair in pairs)
        {
            int[] c = await Direct.TokensAsync(mesh.Channel, pair.Clean), r = await Direct.TokensAsync(mesh.Channel, pair.Corrupted);
            int answer = (await Direct.TokensAsync(mesh.Channel, pair.Answer))[^1];
            var (caps, cleanResult) = await Direct.RunAsync(mesh.Channel, new RunRequest
            {
                Inputs = { Direct.Tokens(c) },
                Captures = { new Capture { Hooks = { "blocks.*.attn.hook_z" } } },
                Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last },
            });
            var request = new RunRequest { Inputs = { Direct.Tokens(r), Direct.Tokens(r), Direct.Tokens(r) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            for (int layer = 0; layer < 2; layer++)
            {
                var z = caps[$"blocks.{layer}.attn.hook_z"].ToProto();
                var chosen = ranked.Take(2).Where(x => x.Layer == layer).Select(x => x.Head).ToList();
                var others = ranked.Skip(2).Where(x => x.Layer == layer).Select(x => x.Head).ToList();
                if (chosen.Count > 0)
                    request.Interventions.Add(new Contracts.V1.Intervention { Hook = $"blocks.{layer}.attn.hook_z", Op = Contracts.V1.InterventionOp.Set, Value = z, Heads = { chosen }, Rows = { 1 } });
                if (others.Count > 0)
                    request.Interventions.Add(new Contracts.V1.Intervention { Hook = $"blocks.{layer}.attn.hook_z", Op = Contracts.V1.InterventionOp.Set, Value = z, Heads = { others }, Rows = { 2 } });
            }
            var (_, result) = await Direct.RunAsync(mesh.Channel, request);
            double P(float[] row) => Math.Exp(row[answer] - row.Max()) / row.Sum(x => Math.Exp(x - row.Max()));
            var rows = WireTensor.FromProto(result.Logits, "logits").ToFloat32Rows();
            clean += P(WireTensor.FromProto(cleanResult.Logits, "logits").ToFloat32()) / pairs.Count;
            corrupt += P(rows[0].ToArray()) / pairs.Count;
            top += P(rows[1].ToArray()) / pairs.Count;
            rest += P(rows[2].ToArray()) / pairs.Count;
        }
        double topShare = (top - corrupt) / (clean - corrupt), restShare = (rest - corrupt) / (clean - corrupt);
        output.WriteLine($"by hand: clean {clean} corrupted {corrupt}; top 2 together {topShare}, other 6 together {restShare}");
        // Asserted: the plugin's top 2 heads (measured: L1H3 0.758, L1H0 0.670 each) together restore over 0.95 of
        // P(answer)'s gap (measured 0.9998), at least 0.3 more than the other 6 heads together (measured 0.572:
        // the layer-0 heads among them feed the top 2).
        Assert.True(topShare > 0.95 && topShare > restShare + 0.3, $"top 2 ({string.Join(", ", ranked.Take(2))}) restore {topShare}, the other 6 {restShare}");
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.True(Math.Abs(summary["clean_metric"]!.GetValue<double>() - clean) < 1e-4 && Math.Abs(summary["corrupted_metric"]!.GetValue<double>() - corrupt) < 1e-4);
    }
}

/// <summary>Attribution patching with the engine's own gradients (RunRequest.gradient) on the induction toy.</summary>
public sealed class CircuitsAttributionTests(InductionMeshFixture mesh, ITestOutputHelper output) : IClassFixture<InductionMeshFixture>
{
    private static double Spearman(IReadOnlyList<double> a, IReadOnlyList<double> b)
    {
        // Written here again (average ranks for ties), not the plugin's.
        static double[] Ranks(IReadOnlyList<double> v)
        {
            var order = Enumerable.Range(0, v.Count).OrderBy(i => v[i]).ToArray();
            var r = new double[v.Count];
            for (int i = 0; i < order.Length;)
            {
                int j = i;
                while (j + 1 < order.Length && v[order[j + 1]] == v[order[i]])
                    j++;
                for (int k = i; k <= j; k++)
                    r[order[k]] = (i + j) / 2.0;
                i = j + 1;
            }
            return r;
        }
        var ra = Ranks(a);
        var rb = Ranks(b);
        double ma = ra.Average(), mb = rb.Average();
        double cov = ra.Zip(rb, (x, y) => (x - ma) * (y - mb)).Sum();
        return cov / Math.Sqrt(ra.Sum(x => (x - ma) * (x - ma)) * rb.Sum(y => (y - mb) * (y - mb)));
    }

    [Fact]
    public async Task Attribution_patching_with_the_engine_s_gradients_ranks_heads_like_activation_patching()
    {
        var pairs = CircuitsInductionTests.Pairs(8, 1, whole: true);
        var attribution = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "attribution_patching", pairs, verify_top = 10 }));
        Assert.True(attribution.State == JobState.Succeeded, attribution.Error);
        var patching = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "activation_patching", pairs, components = new[] { "heads" } }));
        Assert.True(patching.State == JobState.Succeeded, patching.Error);
        var estimates = Direct.Rows(attribution, "attributions").Where(r => r[1].GetString() == "head").ToDictionary(r => r[0].GetString()!, r => r[6].GetDouble());
        var effects = Direct.Rows(patching, "effects").ToDictionary(r => $"L{r[2].GetInt32()}H{r[3].GetInt32()}", r => r[7].GetDouble());
        Assert.Equal(effects.Keys.Order(), estimates.Keys.Order());
        var labels = effects.Keys.Order().ToList();
        double rho = Spearman([.. labels.Select(l => estimates[l])], [.. labels.Select(l => effects[l])]);
        output.WriteLine($"estimates {JsonSerializer.Serialize(estimates)}\neffects {JsonSerializer.Serialize(effects)}\nspearman {rho}; summary {attribution.Result.SummaryJson}");
        // The issue's bar: attribution patching ranks the 8 heads like activation patching, Spearman ≥ 0.8.
        Assert.True(rho >= 0.8, $"Spearman {rho}");
        var top4 = estimates.OrderByDescending(e => e.Value).Take(4).Select(e => e.Key).Order();
        Assert.Equal(Card.Heads("induction", "induction").Order(), top4);
        var summary = JsonNode.Parse(attribution.Result.SummaryJson)!;
        Assert.True(summary["spearman"]!.GetValue<double>() >= 0.5, $"the plugin's own verification on its top 10 nodes: {summary["spearman"]}");

        // Second computation: the same estimates with gradients from central finite differences of
        // Runs (in process, no gradient engine), on two of the pairs.
        var two = pairs.Take(2).ToList();
        var viaEngine = await mesh.RunAsync("circuits", JsonSerializer.Serialize(new { mode = "attribution_patching", pairs = two }));
        Assert.True(viaEngine.State == JobState.Succeeded, viaEngine.Error);
        using var model = InterpMesh.Plugins.Testing.TestModel.Load(RepoPaths.Models("induction"));
        using var context = new InterpMesh.Plugins.Testing.TestAnalysisContext(new FiniteDifferenceGradients(model.Client));
        var viaDifferences = await InterpMesh.Plugins.Testing.PluginHarness.RunAsync(new Circuits.CircuitsPlugin(),
            JsonSerializer.Serialize(new { mode = "attribution_patching", pairs = two }), context);
        var engineRows = Direct.Rows(viaEngine, "attributions").Where(r => r[1].GetString() == "head").ToDictionary(r => r[0].GetString()!, r => r[6].GetDouble());
        var differenceRows = viaDifferences.Tables.Single(t => t.Name == "attributions").Rows.Where(r => r[1]!.GetValue<string>() == "head")
            .ToDictionary(r => r[0]!.GetValue<string>(), r => r[6]!.GetValue<double>());
        double scale = differenceRows.Values.Max(Math.Abs);
        foreach (var (head, fd) in differenceRows)
            Assert.True(Math.Abs(engineRows[head] - fd) <= 0.02 * scale, $"{head}: engine gradients {engineRows[head]}, finite differences {fd} (tolerance 2% of the largest, {0.02 * scale})");
    }
}

public sealed class CircuitsMathTests
{
    [Fact]
    public void Spearman_uses_average_ranks_for_ties()
    {
        Assert.Equal(1, Circuits.AttributionPatching.Spearman([1, 2, 3, 4], [10, 20, 30, 45]), 12);
        Assert.Equal(-1, Circuits.AttributionPatching.Spearman([1, 2, 3, 4], [4, 3, 2, 1]), 12);
        // By hand: ranks [0, 1.5, 1.5, 3] and [0, 2, 1, 3] give 4.5 / sqrt(4.5 · 5).
        Assert.Equal(4.5 / Math.Sqrt(4.5 * 5), Circuits.AttributionPatching.Spearman([1, 2, 2, 3], [1, 3, 2, 4]), 12);
        Assert.True(double.IsNaN(Circuits.AttributionPatching.Spearman([1], [1])));
    }
}

/// <summary>
/// A model client that answers RunRequest.gradient with central finite differences of Runs (ADD ±h
/// at one element, restricted to its row, position and head): the gradient contract without the
/// gradient engine, so attribution patching's own arithmetic can be checked in process.
/// </summary>
internal sealed class FiniteDifferenceGradients(IModelClient inner) : IModelClient
{
    private const float H = 1e-2f;

    public string Name => inner.Name;

    public Task<ModelInfo> GetInfoAsync(CancellationToken cancellationToken = default) => inner.GetInfoAsync(cancellationToken);

    public Task<IReadOnlyList<int[]>> TokenizeAsync(IReadOnlyList<string> texts, CancellationToken cancellationToken = default) => inner.TokenizeAsync(texts, cancellationToken);

    public Task<IReadOnlyList<string>> DetokenizeAsync(IReadOnlyList<int[]> tokens, CancellationToken cancellationToken = default) => inner.DetokenizeAsync(tokens, cancellationToken);

    public IAsyncEnumerable<GenerateResponse> GenerateAsync(GenerateRequest request, CancellationToken cancellationToken = default) => inner.GenerateAsync(request, cancellationToken);

    public IAsyncEnumerable<ModelWeight> GetWeightsAsync(IReadOnlyList<string> names, DType dtype = DType.Unspecified, CancellationToken cancellationToken = default) => inner.GetWeightsAsync(names, dtype, cancellationToken);

    public async IAsyncEnumerable<RunOutput> RunAsync(RunRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        if (request.Gradient is not { } gradient)
        {
            await foreach (var o in inner.RunAsync(request, cancellationToken))
                yield return o;
            yield break;
        }
        // The forward itself: the request's own captures (passed on as activations) and the gradient hooks' shapes.
        var captured = request.Captures.SelectMany(c => c.Hooks).ToHashSet(StringComparer.Ordinal);
        var plain = request.Clone();
        plain.Gradient = null;
        plain.Captures.Add(new Capture { Hooks = { gradient.Hooks } });
        var shapes = new Dictionary<string, long[]>();
        RunResult? result = null;
        await foreach (var o in inner.RunAsync(plain, cancellationToken))
        {
            if (o.Activation is { } t)
            {
                shapes[o.Hook!] = [.. t.shape];
                if (captured.Contains(o.Hook!))
                    yield return o;
                else
                    t.Dispose();
            }
            result ??= o.Result;
        }
        int rows = request.Inputs.Count;
        foreach (var (hook, shape) in shapes)
        {
            long perRow = shape.Skip(1).Aggregate(1L, (a, b) => a * b), last = shape[^1];
            var grad = new float[rows * perRow];
            var probes = new List<(int Row, long Element, Contracts.V1.Intervention Plus, Contracts.V1.Intervention Minus)>();
            for (int r = 0; r < rows; r++)
            {
                for (long e = 0; e < perRow; e++)
                {
                    long position = e / (perRow / shape[1]);
                    int? head = shape.Length == 4 ? (int)(e / last % shape[2]) : null;
                    Contracts.V1.Intervention Add(float sign)
                    {
                        var v = new float[last];
                        v[e % last] = sign * H;
                        var iv = new Contracts.V1.Intervention { Hook = hook, Op = Contracts.V1.InterventionOp.Add, Value = WireTensor.FromFloat32(v, last).ToProto(), Positions = { (int)position } };
                        if (head is int h)
                            iv.Heads.Add(h);
                        return iv;
                    }
                    probes.Add((r, e, Add(1), Add(-1)));
                }
            }
            for (int start = 0; start < probes.Count; start += 32)
            {
                var chunk = probes.Skip(start).Take(32).ToList();
                var run = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
                run.Interventions.AddRange(request.Interventions);
                for (int i = 0; i < chunk.Count; i++)
                {
                    run.Inputs.Add(request.Inputs[chunk[i].Row]);
                    run.Inputs.Add(request.Inputs[chunk[i].Row]);
                    var plus = chunk[i].Plus.Clone();
                    plus.Rows.Add(2 * i);
                    var minus = chunk[i].Minus.Clone();
                    minus.Rows.Add(2 * i + 1);
                    run.Interventions.Add(plus);
                    run.Interventions.Add(minus);
                }
                RunResult? r2 = null;
                await foreach (var o in inner.RunAsync(run, cancellationToken))
                    r2 ??= o.Result;
                var logits = WireTensor.FromProto(r2!.Logits, "logits").ToFloat32Rows();
                for (int i = 0; i < chunk.Count; i++)
                {
                    double mp = Metric(gradient, logits[2 * i].ToArray(), chunk[i].Row), mm = Metric(gradient, logits[2 * i + 1].ToArray(), chunk[i].Row);
                    grad[chunk[i].Row * perRow + chunk[i].Element] = (float)((mp - mm) / (2 * H));
                }
            }
            yield return new RunOutput { Hook = hook, Activation = TorchSharp.torch.tensor(grad, shape), Gradient = true };
        }
        yield return new RunOutput { Result = result };
    }

    private static double Metric(GradientRequest g, float[] logits, int row)
    {
        if (g.LogitDifference is { } d)
        {
            var correct = d.Correct.Count == 1 ? d.Correct[0] : d.Correct[row];
            var incorrect = d.Incorrect.Count == 1 ? d.Incorrect[0] : d.Incorrect[row];
            return correct.Ids.Average(i => (double)logits[i]) - incorrect.Ids.Average(i => (double)logits[i]);
        }
        int token = g.LogProb.Tokens.Count == 1 ? g.LogProb.Tokens[0] : g.LogProb.Tokens[row];
        double max = logits.Max();
        return logits[token] - (max + Math.Log(logits.Sum(x => Math.Exp(x - max))));
    }
}

/// <summary>Attribution patching's arithmetic on the induction toy, with finite-difference gradients (the gradient engine's own tests are elsewhere).</summary>
public sealed class CircuitsAttributionArithmeticTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Estimates_are_activation_differences_times_gradients_and_rank_like_real_patching()
    {
        using var model = InterpMesh.Plugins.Testing.TestModel.Load(RepoPaths.Models("induction"));
        var client = new FiniteDifferenceGradients(model.Client);
        using var context = new InterpMesh.Plugins.Testing.TestAnalysisContext(client);
        var pairs = CircuitsInductionTests.Pairs(2, 8, whole: true);
        var result = await InterpMesh.Plugins.Testing.PluginHarness.RunAsync(new Circuits.CircuitsPlugin(),
            JsonSerializer.Serialize(new { mode = "attribution_patching", pairs, verify_top = 10 }), context);
        var rows = result.Tables.Single(t => t.Name == "attributions").Rows;
        var verification = result.Tables.Single(t => t.Name == "verification").Rows;
        output.WriteLine($"{result.Summary.ToJsonString()}\n{string.Join("\n", verification.Select(r => string.Join(" ", r.Select(x => x?.ToJsonString()))))}");

        // Independent: the directional derivative of the metric along Δz of head L1H2 (ADD ±ε·Δz, central
        // difference), averaged over the pairs — the first-order estimate without any gradient.
        double directional = 0;
        foreach (var pair in pairs.Select(x => JsonSerializer.SerializeToElement(x)))
        {
            var ids = await model.Client.TokenizeAsync([pair.GetProperty("clean").GetString()!, pair.GetProperty("corrupted").GetString()!, pair.GetProperty("answer").GetString()!, pair.GetProperty("wrong").GetString()!]);
            var z = new Dictionary<int, float[]>();
            long[] shape = [];
            for (int i = 0; i < 2; i++)
            {
                await foreach (var o in model.Client.RunAsync(new RunRequest { Inputs = { Direct.Tokens(ids[i]) }, Captures = { new Capture { Hooks = { "blocks.1.attn.hook_z" } } } }))
                {
                    if (o.Activation is { } t)
                    {
                        using (t)
                        {
                            z[i] = t.data<float>().ToArray();
                            shape = [.. t.shape];
                        }
                    }
                }
            }
            const float eps = 1e-2f;
            var delta = z[0].Zip(z[1], (c, r) => c - r).ToArray();
            var request = new RunRequest { Inputs = { Direct.Tokens(ids[1]), Direct.Tokens(ids[1]) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            request.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.1.attn.hook_z", Op = Contracts.V1.InterventionOp.Add, Heads = { 2 }, Rows = { 0 }, Value = WireTensor.FromFloat32([.. delta.Select(x => x * eps)], shape).ToProto() });
            request.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.1.attn.hook_z", Op = Contracts.V1.InterventionOp.Add, Heads = { 2 }, Rows = { 1 }, Value = WireTensor.FromFloat32([.. delta.Select(x => -x * eps)], shape).ToProto() });
            RunResult? r = null;
            await foreach (var o in model.Client.RunAsync(request))
                r ??= o.Result;
            var logits = WireTensor.FromProto(r!.Logits, "logits").ToFloat32Rows();
            int answer = ids[2][^1], wrong = ids[3][^1];
            directional += ((logits[0][answer] - logits[0][wrong]) - (logits[1][answer] - logits[1][wrong])) / (2 * eps) / pairs.Count;
        }
        double estimate = rows.Single(r => r[0]!.GetValue<string>() == "L1H2")[6]!.GetValue<double>();
        Assert.True(Math.Abs(estimate - directional) < 0.02 * Math.Max(1, Math.Abs(directional)), $"L1H2: estimate {estimate}, directional derivative {directional}");
        Assert.Equal(10, verification.Count);
        // The card's induction heads have the four largest head estimates; estimates rank the 10 heads and MLPs
        // like real patching does (measured Spearman 0.830 with these finite-difference gradients, 2 pairs).
        var heads = rows.Where(r => r[1]!.GetValue<string>() == "head").OrderByDescending(r => r[6]!.GetValue<double>()).Take(4).Select(r => r[0]!.GetValue<string>());
        Assert.Equal(Card.Heads("induction", "induction").Order(), heads.Order());
        Assert.True(result.Summary["spearman"]!.GetValue<double>() >= 0.8, $"spearman {result.Summary["spearman"]}");
    }
}
