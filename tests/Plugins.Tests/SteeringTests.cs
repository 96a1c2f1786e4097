using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.AnalysisWorker.Jobs;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Plugins.Tests;

public sealed class SteeringMeshFixture() : PluginMeshFixture(RepoPaths.Models("concepts"));

/// <summary>The steering plugin on the "concepts" toy model, whose card says adding the sentiment direction turns negative continuations positive.</summary>
public sealed class SteeringTests(SteeringMeshFixture mesh) : IClassFixture<SteeringMeshFixture>
{
    private static readonly string[] Nouns = ["dog", "cat", "bird", "horse", "apple", "cake", "ball", "game"];

    private static (List<string> Positive, List<string> Negative) Pairs()
    {
        string[] pos = ["happy", "good", "bright", "warm", "kind"], neg = ["sad", "bad", "dark", "cold", "cruel"];
        var p = new List<string>();
        var n = new List<string>();
        for (int i = 0; i < 40; i++)
        {
            string noun = Nouns[i % Nouns.Length];
            p.Add($"the {noun} is {pos[i % 5]} . what a");
            n.Add($"the {noun} is {neg[(i + 2) % 5]} . what a");
        }
        return (p, n);
    }

    private static List<JsonElement> Rows(Job job, string table) =>
        [.. JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == table).RowsJson).RootElement.EnumerateArray()];

    [Fact]
    public async Task Extracted_vectors_separate_the_pairs_agree_across_methods_and_export_to_gguf()
    {
        var (positive, negative) = Pairs();
        var job = await mesh.RunAsync("steering", JsonSerializer.Serialize(new { positive, negative, save_as = "vectors/sentiment", export_gguf = true }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var rows = Rows(job, "per_layer");
        Assert.Equal(2, rows.Count);
        foreach (var r in rows)
        {
            Assert.Equal(1.0, r[4].GetDouble());                       // the direction separates every pair
            Assert.True(r[5].GetDouble() >= 0.9, $"layer {r[0]}: cosine(mean diff, PCA) = {r[5]}");
        }
        Assert.True(JsonNode.Parse(job.Result.SummaryJson)!["pairs_per_second"]!.GetValue<double>() > 0);

        // GGUF: read back by an independent reader, compared with the safetensors vectors.
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        var files = await store.LoadFilesAsync("vectors/sentiment-gguf");
        string path = Path.Combine(Path.GetTempPath(), $"cv-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, files["control_vector.gguf"]);
        var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(AppContext.BaseDirectory, "python", "read_gguf.py"), path]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var py = Process.Start(psi)!;
        string stdout = py.StandardOutput.ReadToEnd(), stderr = py.StandardError.ReadToEnd();
        py.WaitForExit();
        Assert.True(py.ExitCode == 0, stderr);
        var gguf = JsonNode.Parse(stdout)!;
        Assert.Equal(3, gguf["version"]!.GetValue<int>());
        Assert.Equal("controlvector", gguf["metadata"]!["general.architecture"]!.GetValue<string>());
        Assert.Equal(2, gguf["metadata"]!["controlvector.layer_count"]!.GetValue<int>());
        Assert.Equal("gpt2", gguf["metadata"]!["controlvector.model_hint"]!.GetValue<string>()); // config.json's model_type
        // llama.cpp adds direction.N to block N's output (blocks.N.hook_resid_post) and refuses N = 0:
        // layer 1's vector is direction.1, layer 0's is left out and the summary says so.
        var vectors = await store.LoadTensorsAsync("vectors/sentiment");
        Assert.Equal(["direction.1"], gguf["tensors"]!.AsObject().Select(kv => kv.Key));
        var tensor = gguf["tensors"]!["direction.1"]!;
        Assert.Equal([64], tensor["dims"]!.AsArray().Select(d => d!.GetValue<int>()));
        Assert.Equal(vectors["mean_diff.1"].data<float>().ToArray(), tensor["values"]!.AsArray().Select(v => v!.GetValue<float>()).ToArray());
        Assert.Equal([0], JsonNode.Parse(job.Result.SummaryJson)!["gguf_skipped_blocks"]!.AsArray().Select(b => b!.GetValue<int>()));
        File.Delete(path);
    }

    private static string Python(params string[] arguments)
    {
        var psi = new ProcessStartInfo("/usr/bin/python3", [Path.Combine(AppContext.BaseDirectory, "python", arguments[0]), .. arguments[1..]]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var py = Process.Start(psi)!;
        string stdout = py.StandardOutput.ReadToEnd(), stderr = py.StandardError.ReadToEnd();
        py.WaitForExit();
        Assert.True(py.ExitCode == 0, stderr);
        return stdout;
    }

    private Task<Job> ApplyAsync(string vector, int layer) => mesh.RunAsync("steering", JsonSerializer.Serialize(new
    {
        mode = "apply",
        vector,
        layer,
        coefficients = new[] { 0.0, 2.0 },
        prompts = new[] { "the cat is sad . what a", "the ball is bad . what a" },
        max_new_tokens = 2,
        target = new[] { "lovely", "great" },
        control = new[] { "awful", "grim" },
    }));

    [Fact]
    public async Task A_gguf_control_vector_steers_exactly_as_the_vector_it_was_written_from()
    {
        var (positive, negative) = Pairs();
        var extract = await mesh.RunAsync("steering", JsonSerializer.Serialize(new { positive, negative, save_as = "vectors/roundtrip", export_gguf = true, gguf_normalize = false }));
        Assert.True(extract.State == JobState.Succeeded, extract.Error);
        var fromSafetensors = await ApplyAsync("vectors/roundtrip", 1);
        var fromGguf = await ApplyAsync("vectors/roundtrip-gguf", 1);
        Assert.True(fromGguf.State == JobState.Succeeded, fromGguf.Error);
        var a = Rows(fromSafetensors, "sweep").Select(r => r[1].GetDouble()).ToList();
        var b = Rows(fromGguf, "sweep").Select(r => r[1].GetDouble()).ToList();
        Assert.Equal(a, b);
        Assert.NotEqual(a[0], a[1]); // the vector does something
        Assert.Equal("gguf_control_vector", JsonNode.Parse(fromGguf.Result.SummaryJson)!["method"]!.GetValue<string>());

        // Block 0 is not in the file: asking for it says what the file has.
        var zero = await ApplyAsync("vectors/roundtrip-gguf", 0);
        Assert.Equal("INVALID_ARGUMENT", zero.ErrorCode);
        Assert.Contains("has no direction.0 (it has direction.1)", zero.Error, StringComparison.Ordinal);

        // With normalisation, each direction has unit length (read by the independent reader).
        var normalized = await mesh.RunAsync("steering", JsonSerializer.Serialize(new { positive, negative, save_as = "vectors/unit", export_gguf = true, gguf_normalize = true }));
        Assert.True(normalized.State == JobState.Succeeded, normalized.Error);
        var files = await mesh.WorkerServices.GetRequiredService<PluginArtifacts>().LoadFilesAsync("vectors/unit-gguf");
        string path = Path.Combine(Path.GetTempPath(), $"interpmesh-cv-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, files["control_vector.gguf"]);
        var values = JsonNode.Parse(Python("read_gguf.py", path))!["tensors"]!["direction.1"]!["values"]!.AsArray().Select(v => (double)v!.GetValue<float>());
        File.Delete(path);
        Assert.Equal(1.0, Math.Sqrt(values.Sum(v => v * v)), 5);
    }

    [Theory]
    [InlineData(false, 32)]
    [InlineData(true, 64)]
    public async Task Control_vectors_written_by_another_tool_are_read_as_steering_vectors(bool f16, int alignment)
    {
        // An independent writer (repeng / cvector-generator layout, extra metadata of several types).
        string path = Path.Combine(Path.GetTempPath(), $"interpmesh-cv-{Guid.NewGuid():N}.gguf");
        var args = new List<string> { "write_gguf.py", path, "64", "7", "1", "--alignment", alignment.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (f16)
            args.Add("--f16");
        var written = JsonNode.Parse(Python([.. args]))!["1"]!.AsArray().Select(v => (float)v!.GetValue<double>()).ToArray();
        var store = mesh.WorkerServices.GetRequiredService<PluginArtifacts>();
        string name = f16 ? "vectors/external-f16" : "vectors/external-f32";
        await store.SaveFilesAsync(name, new Dictionary<string, byte[]> { ["repeng.gguf"] = File.ReadAllBytes(path) });
        File.Delete(path);
        // The same values as an extract artifact: both must steer identically.
        using (var t = TorchSharp.torch.tensor(written))
            await store.SaveTensorsAsync($"{name}-st", new Dictionary<string, TorchSharp.torch.Tensor> { ["mean_diff.1"] = t });
        var fromGguf = await ApplyAsync(name, 1);
        var reference = await ApplyAsync($"{name}-st", 1);
        Assert.True(fromGguf.State == JobState.Succeeded, fromGguf.Error);
        Assert.Equal(Rows(reference, "sweep").Select(r => r[1].GetDouble()), Rows(fromGguf, "sweep").Select(r => r[1].GetDouble()));
    }

    [Theory]
    [InlineData("arch", "is a GGUF file of architecture 'llama', not a control vector")]
    [InlineData("block0", "llama.cpp numbers directions from 1")]
    [InlineData("truncated", "is truncated")]
    [InlineData("text", "is not a GGUF file")]
    public async Task A_bad_gguf_file_fails_the_job_saying_what_is_wrong(string kind, string message)
    {
        string path = Path.Combine(Path.GetTempPath(), $"interpmesh-cv-{Guid.NewGuid():N}.gguf");
        byte[] bytes;
        if (kind == "text")
        {
            bytes = System.Text.Encoding.UTF8.GetBytes("these are not the bytes of a GGUF file at all");
        }
        else
        {
            Python(kind == "arch" ? ["write_gguf.py", path, "64", "1", "1", "--arch", "llama"] : ["write_gguf.py", path, "64", "1", kind == "block0" ? "0,1" : "1"]);
            bytes = File.ReadAllBytes(path);
            File.Delete(path);
            if (kind == "truncated")
                bytes = bytes[..40];
        }
        string name = $"vectors/bad-{kind}";
        await mesh.WorkerServices.GetRequiredService<PluginArtifacts>().SaveFilesAsync(name, new Dictionary<string, byte[]> { ["cv.gguf"] = bytes });
        var job = await ApplyAsync(name, 1);
        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("INVALID_ARGUMENT", job.ErrorCode);
        Assert.Contains(message, job.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("/tmp", job.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Raising_the_coefficient_shifts_behaviour_toward_positive_and_zero_changes_nothing()
    {
        var (positive, negative) = Pairs();
        var extract = await mesh.RunAsync("steering", JsonSerializer.Serialize(new { positive, negative, save_as = "vectors/sweep", layers = new[] { 0 } }));
        Assert.True(extract.State == JobState.Succeeded, extract.Error);
        string[] prompts = ["the cat is sad . what a", "the dogs are cold . what a", "the ball is bad . what a"];
        var job = await mesh.RunAsync("steering", JsonSerializer.Serialize(new
        {
            mode = "apply",
            vector = "vectors/sweep",
            layer = 0,
            coefficients = new[] { 0.0, 0.5, 1.0, 2.0 },
            prompts,
            max_new_tokens = 4,
            target = new[] { "lovely", "great", "nice" },
            control = new[] { "awful", "grim", "poor" },
        }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var sweep = Rows(job, "sweep");
        var diffs = sweep.Select(r => r[1].GetDouble()).ToList();
        Assert.True(diffs.Zip(diffs.Skip(1)).All(p => p.Second > p.First), $"logit differences by coefficient: {string.Join(", ", diffs)}");
        Assert.True(sweep[0][4].GetDouble() < 0.5 && sweep[^1][4].GetDouble() > 0.5, $"target share {sweep[0][4]} at c=0, {sweep[^1][4]} at c=2");

        // c = 0 reproduces unsteered generation exactly (second path: a plain Generate through the gateway).
        var samples = Rows(job, "samples").Where(r => r[0].GetDouble() == 0).ToList();
        var client = new Contracts.V1.ModelService.ModelServiceClient(mesh.Channel);
        foreach (var sample in samples)
        {
            using var call = client.Generate(new GenerateRequest { Prompts = { new Input { Text = sample[1].GetString() } }, MaxNewTokens = 4 }, Mesh.As(Mesh.AliceKey));
            var ids = new TokenIds();
            await foreach (var m in call.ResponseStream.ReadAllAsync())
                ids.Ids.AddRange(m.TokenIds.Where(t => t >= 0));
            var text = await client.DetokenizeAsync(new DetokenizeRequest { Tokens = { ids } }, Mesh.As(Mesh.AliceKey));
            Assert.Equal(text.Texts[0], sample[2].GetString());
        }
    }

    [Fact]
    public async Task A_saved_probe_judges_the_sweep_s_generations()
    {
        // A probe that reads the exclamation's sentiment at the end of a full sentence, trained by the probing plugin.
        string[] good = ["lovely", "great", "nice"], bad = ["awful", "grim", "poor"], adjectives = ["happy", "sad", "warm", "cold"];
        var rng = new Random(4);
        var rows = Enumerable.Range(0, 80).Select(i =>
        {
            bool positive = i % 2 == 0;
            string ex = (positive ? good : bad)[rng.Next(3)];
            return new { text = $"the {Nouns[rng.Next(Nouns.Length)]} is {adjectives[rng.Next(4)]} . what a {ex} {new[] { "walk", "meal", "match" }[rng.Next(3)]} .", label = positive ? "positive" : "negative" };
        }).ToList();
        var probe = await mesh.RunAsync("probing", JsonSerializer.Serialize(new { rows, hooks = new[] { "blocks.1.hook_resid_post" }, sparse = new { enabled = false }, save_prefix = "probes/exclamation" }));
        Assert.True(probe.State == JobState.Succeeded, probe.Error);
        var (positive, negative) = Pairs();
        Assert.Equal(JobState.Succeeded, (await mesh.RunAsync("steering", JsonSerializer.Serialize(new { positive, negative, save_as = "vectors/judged", layers = new[] { 0 } }))).State);
        var job = await mesh.RunAsync("steering", JsonSerializer.Serialize(new
        {
            mode = "apply",
            vector = "vectors/judged",
            layer = 0,
            coefficients = new[] { 0.0, 2.0 },
            prompts = new[] { "the cat is sad . what a", "the dogs are cold . what a" },
            max_new_tokens = 3,
            classifier = new { probe = "probes/exclamation/blocks.1.hook_resid_post", @class = "positive" },
        }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var sweep = Rows(job, "sweep");
        double before = sweep[0][5].GetDouble(), after = sweep[1][5].GetDouble();
        Assert.True(before < 0.5 && after > 0.5, $"the probe's P(positive) of the generations: {before} at c=0, {after} at c=2; samples: {job.Result.Tables.Single(t => t.Name == "samples").RowsJson}");
    }

    [Theory]
    [InlineData("""{"positive": ["the dog is happy . what a", "the cat is good . what a"], "negative": ["the dog is sad . what a"]}""", "positive has 2 texts and negative 1")]
    [InlineData("""{"positive": [], "negative": []}""", "positive is empty")]
    [InlineData("""{"positive": ["the dog is happy . what a"], "negative": ["the dog is sad . what a"], "layers": [7]}""", "layer 7 is out of range; this model has layers 0..1")]
    public async Task Bad_input_fails_the_job_as_invalid_argument(string parameters, string message)
    {
        var job = await mesh.RunAsync("steering", parameters);
        Assert.Equal(JobState.Failed, job.State);
        Assert.Equal("INVALID_ARGUMENT", job.ErrorCode);
        Assert.Contains(message, job.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_coefficient_that_is_not_a_number_is_refused_at_submission()
    {
        var client = new AnalysisService.AnalysisServiceClient(mesh.Channel);
        foreach (var bad in new[] { """{"mode": "apply", "coefficients": [NaN]}""", """{"mode": "apply", "coefficients": ["NaN"]}""" })
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(new AnalysisRequest { Plugin = "steering", ParametersJson = bad }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        }
    }

    [Fact]
    public async Task Function_vectors_report_indirect_effects_per_head_and_save_the_vector()
    {
        // In-context prompts whose answer is the sentence's sentiment exclamation; shuffled prompts pair the
        // context with the opposite answer.
        string[] icl = ["the dog is happy . what a", "the cat is kind . what a", "the bird is sad . what a", "the cake is cold . what a"];
        var job = await mesh.RunAsync("steering", JsonSerializer.Serialize(new
        {
            mode = "function_vector",
            icl_prompts = icl,
            shuffled_prompts = icl,
            answers = new[] { "great", "lovely", "awful", "grim" },
            zero_shot = new[] { "the horse is warm . what a", "the ball is bad . what a" },
            zero_shot_answers = new[] { "nice", "poor" },
            top_heads = 3,
            layer = 0,
        }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        Assert.Equal(2 * 4, Rows(job, "heads").Count);
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        Assert.Equal(3, summary["top_heads"]!.AsArray().Count);
        Assert.Single(job.Result.Artifacts);
    }
}

public sealed class FunctionsMeshFixture() : PluginMeshFixture(RepoPaths.Models("functions"));

/// <summary>Function vectors on the "functions" toy: three shift functions the model infers from in-context examples.</summary>
public sealed class FunctionVectorTests(FunctionsMeshFixture mesh) : IClassFixture<FunctionsMeshFixture>
{
    private static string X(int i) => $"x{((i % 24) + 24) % 24:D2}";

    [Fact]
    public async Task A_function_vector_makes_prompts_without_examples_apply_the_function()
    {
        var rng = new Random(5);
        const int shift = 5;
        var icl = new List<string>();
        var shuffled = new List<string>();
        var answers = new List<string>();
        for (int n = 0; n < 16; n++)
        {
            var xs = Enumerable.Range(0, 5).Select(_ => rng.Next(24)).ToArray();
            int query = rng.Next(24);
            icl.Add(string.Join(' ', xs.Select(x => $"{X(x)} {X(x + shift)}")) + $" {X(query)}");
            shuffled.Add(string.Join(' ', xs.Select(x => $"{X(x)} {X(rng.Next(24))}")) + $" {X(query)}");
            answers.Add(X(query + shift));
        }
        var zeroX = Enumerable.Range(0, 24).ToArray();
        var job = await mesh.RunAsync("steering", JsonSerializer.Serialize(new
        {
            mode = "function_vector",
            icl_prompts = icl,
            shuffled_prompts = shuffled,
            answers,
            zero_shot = zeroX.Select(X),
            zero_shot_answers = zeroX.Select(x => X(x + shift)),
            top_heads = 8,
            layer = 0,
        }));
        Assert.True(job.State == JobState.Succeeded, job.Error);
        var summary = JsonNode.Parse(job.Result.SummaryJson)!;
        double before = summary["zero_shot_accuracy"]!.GetValue<double>(), after = summary["zero_shot_accuracy_with_fv"]!.GetValue<double>();
        // Measured: 8.3% → 37.5% (chance 4.2%). The toy has only 8 heads, so "top 8" is all of them.
        Assert.True(after >= 3 * before && after >= before + 0.25, $"zero-shot accuracy {before} without the function vector, {after} with it; top heads {summary["top_heads"]!.ToJsonString()}");
        Assert.Equal(8, JsonDocument.Parse(job.Result.Tables.Single(t => t.Name == "heads").RowsJson).RootElement.GetArrayLength());
    }
}
