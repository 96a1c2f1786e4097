using System.Text.Json.Nodes;
using InterpMesh.Contracts.V1;
using InterpMesh.Plugins.Testing;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// InterpMesh.Plugins.Testing's own rules (the sample plugin's tests exercise it end to end, see
/// Gateway.Tests' SamplePluginTestingTests): the in-memory store keeps the gateway store's name
/// checks and errors, the context clamps progress as the gateway does, a random preset serves.
/// </summary>
public sealed class TestingPackageTests
{
    [Fact]
    public async Task The_in_memory_store_round_trips_tensors_and_files_with_checksums()
    {
        var store = new InMemoryArtifactStore();
        using var values = arange(6, dtype: ScalarType.Float32).view(2, 3);
        var saved = await store.SaveTensorsAsync("vectors/a", new Dictionary<string, TorchSharp.torch.Tensor> { ["v"] = values }, new JsonObject { ["layer"] = 3 });
        var loaded = await store.LoadTensorsAsync("vectors/a");
        using (var v = loaded["v"])
            Assert.True(v.eq(values).all().item<bool>() && v.shape.SequenceEqual(values.shape), "loaded tensor differs from the saved one");
        Assert.Equal(3, saved.Metadata["layer"]!.GetValue<int>());
        var file = Assert.Single(saved.Files);
        var bytes = (await store.LoadFilesAsync("vectors/a"))[InMemoryArtifactStore.TensorsFile];
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes)), file.Sha256);

        await store.SaveFilesAsync("sae/x", new Dictionary<string, byte[]> { ["cfg.json"] = "{}"u8.ToArray() });
        Assert.Equal(["sae/x", "vectors/a"], store.Names);
    }

    [Theory]
    [InlineData("../escape")]
    [InlineData("Upper/case")]
    [InlineData("")]
    public async Task Bad_artifact_names_get_the_gateways_message(string name)
    {
        var store = new InMemoryArtifactStore();
        var error = await Assert.ThrowsAsync<ArgumentException>(() => store.SaveFilesAsync(name, new Dictionary<string, byte[]> { ["a.txt"] = [1] }));
        Assert.Contains("artifact name", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Missing_artifacts_files_and_wrong_kinds_say_what_exists()
    {
        var store = new InMemoryArtifactStore();
        await Assert.ThrowsAsync<FileNotFoundException>(() => store.LoadFilesAsync("nothing/here"));
        Assert.Null(await store.FindAsync("nothing/here"));
        var badFile = await Assert.ThrowsAsync<ArgumentException>(() => store.SaveFilesAsync("a/b", new Dictionary<string, byte[]> { ["../x"] = [1] }));
        Assert.Contains("file name", badFile.Message, StringComparison.Ordinal);
        await store.SaveFilesAsync("a/b", new Dictionary<string, byte[]> { ["cfg.json"] = [1] });
        var notTensors = await Assert.ThrowsAsync<ArgumentException>(() => store.LoadTensorsAsync("a/b"));
        Assert.Contains("cfg.json", notTensors.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_context_records_progress_clamped_as_the_gateway_does()
    {
        using var model = TestModel.Random("llama-tiny", seed: 1);
        using var context = model.NewContext();
        context.ReportProgress(0.5, "half");
        context.ReportProgress(double.NaN, "nan");
        context.ReportProgress(7, "over");
        Assert.Equal([0.5, 0.0, 1.0], context.Progress.Select(p => p.Fraction));
        Assert.Equal("test-job", context.JobId);
        Assert.IsType<InMemoryArtifactStore>(context.Artifacts);
    }

    [Fact]
    public async Task A_random_preset_serves_runs_and_refuses_text_without_a_tokenizer()
    {
        using var model = TestModel.Random("llama-tiny", seed: 1);
        var info = await model.Client.GetInfoAsync();
        Assert.Equal("test-model", model.Client.Name);
        var request = new RunRequest { Inputs = { new Input { Tokens = new TokenIds { Ids = { 1, 2, 3 } } } }, Captures = { new Capture { Hooks = { "blocks.0.hook_resid_post" } } } };
        var outputs = new List<RunOutput>();
        await foreach (var output in model.Client.RunAsync(request))
            outputs.Add(output);
        using (var activation = outputs[0].Activation!)
            Assert.Equal(new long[] { 1, 3, info.DModel }, activation.shape);
        Assert.NotNull(outputs[^1].Result);
        var error = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => model.Client.TokenizeAsync(["hello"]));
        Assert.Equal(Grpc.Core.StatusCode.FailedPrecondition, error.StatusCode);
    }

    [Fact]
    public async Task Served_weights_reproduce_the_logits_and_bad_names_are_invalid_argument()
    {
        // SDK 2.1's GetWeightsAsync: ln_final.w and unembed.W_U applied to the captured normalised final
        // residual must give the model's logits (a second computation path).
        using var model = TestModel.Random("llama-tiny", seed: 1);
        var weights = new Dictionary<string, TorchSharp.torch.Tensor>();
        await foreach (var w in model.Client.GetWeightsAsync(["ln_final.w", "unembed.*"]))
            weights[w.Name] = w.Tensor;
        Assert.Equal(["ln_final.w", "unembed.W_U"], weights.Keys.Order());
        var request = new RunRequest
        {
            Inputs = { new Input { Tokens = new TokenIds { Ids = { 1, 2, 3, 4 } } } },
            Captures = { new Capture { Hooks = { "ln_final.hook_normalized" } } },
            Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.All },
        };
        TorchSharp.torch.Tensor? normalized = null;
        RunResult? result = null;
        await foreach (var output in model.Client.RunAsync(request))
        {
            normalized ??= output.Activation;
            result ??= output.Result;
        }
        using (normalized)
        using (var expected = (normalized! * weights["ln_final.w"]).matmul(weights["unembed.W_U"]))
        using (var logits = InterpMesh.Contracts.Tensors.WireTensor.FromProto(result!.Logits, "logits").ToTorch())
        using (var diff = (expected - logits).abs().max())
            Assert.True(diff.item<float>() < 1e-4f, $"max |diff| {diff.item<float>()}");
        foreach (var t in weights.Values)
            t.Dispose();
        var error = await Assert.ThrowsAsync<Grpc.Core.RpcException>(async () =>
        {
            await foreach (var w in model.Client.GetWeightsAsync(["blocks.0.attn.W_X"]))
                w.Tensor.Dispose();
        });
        Assert.Equal(Grpc.Core.StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("unknown weight", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void An_unknown_preset_names_the_known_ones()
    {
        var error = Assert.Throws<ArgumentException>(() => TestModel.Random("gpt5"));
        Assert.Contains("llama-tiny", error.Message, StringComparison.Ordinal);
    }
}
