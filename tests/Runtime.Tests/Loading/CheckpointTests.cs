using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Loading;

/// <summary>Hugging Face checkpoints of every supported architecture, dtype and layout, against a naive reference forward.</summary>
public sealed class CheckpointTests : TorchTest
{
    private static readonly int[] Prompt = [3, 17, 42, 5, 88, 60, 1, 9, 33];
    private static readonly HfCheckpointWriter.Shape Shape = new();

    public static TheoryData<string, bool> Architectures => new()
    {
        { "LlamaForCausalLM", true }, { "LlamaForCausalLM", false }, { "MistralForCausalLM", false }, { "Qwen2ForCausalLM", true }, { "Qwen2ForCausalLM", false },
    };

    private static Tensor RuntimeLogits(string folder, ScalarType dtype = ScalarType.Float32)
    {
        using var model = ModelLoader.Load(folder, dtype: dtype);
        return model.Transformer.Forward(Ids(Prompt), null, HookPlan.Empty, null, LogitsMode.All)![0].to(ScalarType.Float32);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Llama_family_checkpoints_match_the_reference_forward(string arch, bool tied)
    {
        using var dir = new TempFolder();
        var weights = HfCheckpointWriter.LlamaFamily(arch, Shape, tied, seed: 11);
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig(arch, Shape, tied, theta: 500000), weights);
        var reference = ReferenceForward.Llama(weights, Shape.Layers, Shape.Heads, Shape.KvHeads, Shape.Hidden / Shape.Heads, 1e-6, 500000, tied, Prompt);
        double diff = MaxAbsDiff(RuntimeLogits(dir.Path), reference);
        Assert.True(diff <= 1e-4, $"{arch} tied={tied}: max |Δlogit| {diff:E2}");
    }

    [Fact]
    public void Qwen2_qkv_biases_are_used()
    {
        using var dir = new TempFolder();
        var weights = HfCheckpointWriter.LlamaFamily("Qwen2ForCausalLM", Shape, true, seed: 12);
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig("Qwen2ForCausalLM", Shape, true), weights);
        var withBias = RuntimeLogits(dir.Path);
        foreach (var key in weights.Keys.Where(k => k.EndsWith(".bias", StringComparison.Ordinal)).ToList())
            weights[key] = zeros_like(weights[key]);
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig("Qwen2ForCausalLM", Shape, true), weights);
        Assert.True(MaxAbsDiff(withBias, RuntimeLogits(dir.Path)) > 1e-3);
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void Half_precision_weights_load_exactly(ScalarType stored)
    {
        using var dir = new TempFolder();
        var weights = HfCheckpointWriter.LlamaFamily("LlamaForCausalLM", Shape, false, seed: 13);
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig("LlamaForCausalLM", Shape, false), weights, stored);
        // The reference sees the same rounded weights the file holds.
        var rounded = weights.ToDictionary(kv => kv.Key, kv => kv.Value.to(stored));
        var reference = ReferenceForward.Llama(rounded, Shape.Layers, Shape.Heads, Shape.KvHeads, Shape.Hidden / Shape.Heads, 1e-6, 10000, false, Prompt);
        double diff = MaxAbsDiff(RuntimeLogits(dir.Path), reference);
        Assert.True(diff <= 1e-4, $"{stored}: max |Δlogit| {diff:E2}");
        // Computing in bfloat16 stays close to float32 (bf16 has ~3 significant digits).
        Assert.True(MaxAbsDiff(RuntimeLogits(dir.Path, ScalarType.BFloat16), reference) < 0.25);
    }

    [Fact]
    public void Sharded_checkpoints_load_the_same_as_a_single_file()
    {
        using var single = new TempFolder();
        using var sharded = new TempFolder();
        var weights = HfCheckpointWriter.LlamaFamily("MistralForCausalLM", Shape, false, seed: 14);
        var config = HfCheckpointWriter.LlamaConfig("MistralForCausalLM", Shape, false);
        HfCheckpointWriter.Save(single.Path, config, weights);
        HfCheckpointWriter.Save(sharded.Path, config, weights, shards: 3);
        Assert.True(File.Exists(sharded.File("model.safetensors.index.json")));
        Assert.Equal(0.0, MaxAbsDiff(RuntimeLogits(single.Path), RuntimeLogits(sharded.Path)));
    }

    [Fact]
    public void Gpt2_fixture_matches_the_reference_forward_and_untied_heads_load()
    {
        var weights = ReferenceForward.ReadAll(RepoPaths.Fixture("gpt2-tiny/model.safetensors"));
        var reference = ReferenceForward.Gpt2(weights, 2, 4, 1e-5, true, Prompt);
        Assert.True(MaxAbsDiff(RuntimeLogits(RepoPaths.Fixture("gpt2-tiny")), reference) <= 1e-4);

        using var dir = new TempFolder();
        var untied = weights.ToDictionary(kv => kv.Key.Replace("transformer.", "", StringComparison.Ordinal), kv => kv.Value);
        untied["lm_head.weight"] = randn(512, 64) * 0.1f;
        var config = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, object>>(File.ReadAllText(RepoPaths.Fixture("gpt2-tiny/config.json")))!;
        config["tie_word_embeddings"] = false;
        HfCheckpointWriter.Save(dir.Path, config, untied);
        var expected = ReferenceForward.Gpt2(untied, 2, 4, 1e-5, false, Prompt);
        Assert.True(MaxAbsDiff(RuntimeLogits(dir.Path), expected) <= 1e-4);
    }

    [Fact]
    public void Safetensors_round_trip_keeps_dtype_shape_and_bytes()
    {
        using var dir = new TempFolder();
        var tensors = new Dictionary<string, Tensor>
        {
            ["a"] = randn(3, 5),
            ["b"] = randn(7).to(ScalarType.BFloat16),
            ["c"] = arange(10, dtype: ScalarType.Int64).reshape(2, 5),
            ["empty"] = zeros(0, 4),
        };
        SafeTensorsFile.Write(dir.File("x.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        Assert.Equal("pt", f.Metadata["format"]);
        foreach (var (name, t) in tensors)
        {
            var back = f.Read(name);
            Assert.Equal(t.dtype, back.dtype);
            Assert.Equal(t.shape, back.shape);
            Assert.True(t.to(ScalarType.Float64).allclose(back.to(ScalarType.Float64), 0, 0), name);
        }
    }
}
