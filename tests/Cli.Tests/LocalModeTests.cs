using System.Diagnostics;
using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Cli.Tests;

/// <summary>`interpmesh` local mode: the machine-readable contract scripts rely on.</summary>
public sealed class LocalModeTests
{
    private static readonly string StoriesBin = RepoPaths.Models("stories260K/stories260K.bin");
    private static readonly string StoriesHf = RepoPaths.Models("stories260K-hf");
    private static readonly string Gpt2Tiny = RepoPaths.Fixture("gpt2-tiny");

    private static JsonElement GoldenCase()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.Fixture("stories260K/golden-greedy.json")));
        return doc.RootElement.GetProperty("cases")[0].Clone();
    }

    [Fact]
    public void Info_lists_dimensions_and_every_hook()
    {
        var r = CliRunner.Run("info", "--model", StoriesHf, "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        Assert.Equal("LlamaForCausalLM", j.GetProperty("architecture").GetString());
        Assert.Equal(5, j.GetProperty("n_layers").GetInt32());
        Assert.Equal(64, j.GetProperty("d_model").GetInt32());
        Assert.Equal(8, j.GetProperty("n_heads").GetInt32());
        Assert.Equal(4, j.GetProperty("n_kv_heads").GetInt32());
        Assert.Equal(8, j.GetProperty("d_head").GetInt32());
        Assert.Equal(172, j.GetProperty("d_mlp").GetInt32());
        Assert.Equal(512, j.GetProperty("vocab_size").GetInt32());
        Assert.Equal(512, j.GetProperty("context_length").GetInt32());
        var hooks = j.GetProperty("hooks").EnumerateArray().Select(h => h.GetString()).ToList();
        Assert.Contains("blocks.4.attn.hook_pattern", hooks);
        Assert.Contains("blocks.0.mlp.hook_pre_linear", hooks);
        Assert.DoesNotContain("hook_pos_embed", hooks);
        Assert.Equal("[batch, pos, kv_head, d_head]", j.GetProperty("hook_shapes").GetProperty("blocks.2.attn.hook_k").GetString());

        var gpt2 = CliRunner.Run("info", "--model", Gpt2Tiny, "--json").Json;
        Assert.Contains("hook_pos_embed", gpt2.GetProperty("hooks").EnumerateArray().Select(h => h.GetString()));
    }

    [Fact]
    public void Tokenize_one_text_and_a_json_lines_stream()
    {
        var golden = GoldenCase();
        var r = CliRunner.Run("tokenize", "--model", StoriesBin, "--text", golden.GetProperty("prompt").GetString()!, "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(golden.GetProperty("prompt_token_ids").Ints(), r.Json.GetProperty("ids").Ints());

        var lines = CliRunner.RunWithInput("\"HELLO WORLD\"\n\"you're\"\n\"\"\n", "tokenize", "--tokenizer", RepoPaths.Models("gpt2-tokenizer"), "--json").JsonLines;
        Assert.Equal(3, lines.Count);
        Assert.Equal([13909, 3069, 46, 29564], lines[0].GetProperty("ids").Ints());
        Assert.Equal([5832, 821], lines[1].GetProperty("ids").Ints());
        Assert.Empty(lines[2].GetProperty("ids").Ints());
    }

    [Theory]
    [InlineData("bin")]
    [InlineData("hf")]
    public void Generate_reproduces_the_llama2c_greedy_golden(string format)
    {
        var golden = GoldenCase();
        var prompt = golden.GetProperty("prompt_token_ids").Ints();
        var r = CliRunner.Run("generate", "--model", format == "bin" ? StoriesBin : StoriesHf, "--prompt-ids", string.Join(',', prompt),
            "--max-new-tokens", (60 - prompt.Length).ToString(), "--stop-ids", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(prompt, r.Json.GetProperty("prompt_ids").Ints());
        var generated = r.Json.GetProperty("generated_ids").Ints();
        Assert.Equal(golden.GetProperty("generated_token_ids").Ints(), generated);
        Assert.Equal(1, generated[^1]);
    }

    [Fact]
    public void Generate_from_text_decodes_what_it_generated()
    {
        var golden = GoldenCase();
        var r = CliRunner.Run("generate", "--model", StoriesBin, "--prompt", "Once upon a time", "--max-new-tokens", "55", "--stop-ids", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(golden.GetProperty("prompt_token_ids").Ints(), r.Json.GetProperty("prompt_ids").Ints());
        // run.c prints the prompt and then the continuation.
        Assert.Equal(golden.GetProperty("text").GetString(), "Once upon a time" + r.Json.GetProperty("text").GetString());
    }

    [Fact]
    public void Sampling_is_reproducible_for_a_seed()
    {
        string[] args = ["generate", "--model", StoriesHf, "--prompt-ids", "1,403", "--max-new-tokens", "20", "--temperature", "1.0", "--top-k", "40", "--top-p", "0.9", "--seed", "7", "--stop-ids", "none", "--json"];
        var a = CliRunner.Run(args).Json.GetProperty("generated_ids").Ints();
        var b = CliRunner.Run(args).Json.GetProperty("generated_ids").Ints();
        Assert.Equal(20, a.Length);
        Assert.Equal(a, b);
    }

    [Fact]
    public void Forward_returns_the_golden_gpt2_logits()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(RepoPaths.Fixture("gpt2-tiny/golden-logits.json")));
        var c = doc.RootElement.GetProperty("cases")[0];
        var ids = c.GetProperty("input_ids").Ints();
        var expected = c.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(x => x.GetDouble()).ToArray()).ToArray();

        var all = CliRunner.Run("forward", "--model", Gpt2Tiny, "--ids", string.Join(',', ids), "--logits", "all", "--json");
        Assert.True(all.ExitCode == 0, all.Stderr);
        var rows = all.Json.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(x => x.GetDouble()).ToArray()).ToArray();
        Assert.Equal(ids.Length, rows.Length);
        for (int p = 0; p < rows.Length; p++)
            Assert.True(rows[p].Zip(expected[p]).Max(z => Math.Abs(z.First - z.Second)) <= 1e-4, $"position {p}");

        var last = CliRunner.Run("forward", "--model", Gpt2Tiny, "--ids", string.Join(',', ids), "--logits", "last", "--json").Json.GetProperty("logits");
        Assert.Equal(1, last.GetArrayLength());
        Assert.True(last[0].EnumerateArray().Select(x => x.GetDouble()).Zip(expected[^1]).Max(z => Math.Abs(z.First - z.Second)) <= 1e-4);
    }

    /// <summary>The same ids through the runtime's Transformer.Forward directly: captures (flattened), logits [pos, vocab].</summary>
    private static (Dictionary<string, float[]> Captures, float[][] Logits, double Loss) DirectForward(string model, int[] ids, string[] hooks)
    {
        using var loaded = ModelLoader.Load(model);
        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var captures = new Dictionary<string, float[]>();
        var plan = HookPlan.Build(loaded.Transformer.Hooks, [new CaptureRequest(hooks)], null);
        var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);
        var logits = loaded.Transformer.Forward(input, null, plan, (h, t) => captures[h.Name] = t.contiguous().to(ScalarType.Float32).data<float>().ToArray(), LogitsMode.All)!
            .to(ScalarType.Float32)[0];
        double loss = nn.functional.cross_entropy(logits[..^1], input[0, 1..]).item<float>();
        var rows = Enumerable.Range(0, ids.Length).Select(p => logits[p].data<float>().ToArray()).ToArray();
        return (captures, rows, loss);
    }

    [Fact]
    public void Forward_captures_loss_and_top_k_equal_a_direct_forward()
    {
        int[] ids = [1, 403, 407, 261, 378, 260, 31];
        string[] hooks = ["blocks.1.hook_resid_post", "blocks.3.attn.hook_pattern"];
        var (captures, logits, loss) = DirectForward(StoriesBin, ids, hooks);

        var r = CliRunner.Run("forward", "--model", StoriesBin, "--ids", string.Join(',', ids), "--capture", string.Join(',', hooks), "--loss", "--top-k", "4", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        Assert.False(j.TryGetProperty("logits", out _), "--top-k returns top-k instead of full logits");
        Assert.Equal(loss, j.GetProperty("loss").GetDouble(), 4);

        var topIds = j.GetProperty("top_k").GetProperty("ids").EnumerateArray().Select(row => row.Ints()).ToArray();
        var topValues = j.GetProperty("top_k").GetProperty("values").EnumerateArray().Select(row => row.EnumerateArray().Select(x => x.GetDouble()).ToArray()).ToArray();
        Assert.Equal(ids.Length, topIds.Length);
        for (int p = 0; p < ids.Length; p++)
        {
            var expected = logits[p].Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(4).ToArray();
            Assert.Equal(expected.Select(x => x.i), topIds[p]);
            Assert.True(expected.Zip(topValues[p]).Max(z => Math.Abs(z.First.v - z.Second)) <= 1e-4, $"top-k values at position {p}");
        }

        var got = j.GetProperty("captures");
        Assert.Equal(hooks.Order(), got.EnumerateObject().Select(o => o.Name).Order());
        Assert.Equal(new long[] { 1, ids.Length, 64 }, got.GetProperty(hooks[0]).GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()));
        Assert.Equal(new long[] { 1, 8, ids.Length, ids.Length }, got.GetProperty(hooks[1]).GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()));
        foreach (var hook in hooks)
        {
            var values = got.GetProperty(hook).GetProperty("values").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            Assert.Equal(captures[hook].Length, values.Length);
            Assert.True(captures[hook].Zip(values).Max(z => Math.Abs(z.First - z.Second)) <= 1e-4, hook);
        }
    }

    [Fact]
    public void Forward_prints_capture_stats_and_the_loss()
    {
        int[] ids = [1, 403, 407, 261];
        var (captures, logits, loss) = DirectForward(StoriesBin, ids, ["blocks.0.hook_resid_post"]);
        var r = CliRunner.Run("forward", "--model", StoriesBin, "--ids", string.Join(',', ids), "--logits", "last", "--capture", "blocks.0.hook_resid_post", "--loss");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // Last-position logits: one line, its top id first.
        int best = Array.IndexOf(logits[^1], logits[^1].Max());
        Assert.StartsWith($"position 3 (id 261): top logits {best}:", lines[0]);
        var stats = Assert.Single(lines, l => l.StartsWith("blocks.0.hook_resid_post [1, 4, 64]: ", StringComparison.Ordinal));
        double mean = captures["blocks.0.hook_resid_post"].Average(x => (double)x);
        double printed = double.Parse(stats.Split("mean ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(mean, printed, 3);
        var lossLine = Assert.Single(lines, l => l.StartsWith("mean next-token loss: ", StringComparison.Ordinal));
        Assert.Equal(loss, double.Parse(lossLine["mean next-token loss: ".Length..], System.Globalization.CultureInfo.InvariantCulture), 4);
    }

    [Theory]
    [InlineData("unknown option", 2, "info", "--model", "M", "--jsn")]
    [InlineData("--max-new-tokens is required", 2, "generate", "--model", "M", "--prompt-ids", "1")]
    [InlineData("give exactly one of --prompt", 2, "generate", "--model", "M", "--prompt", "a", "--prompt-ids", "1", "--max-new-tokens", "3")]
    [InlineData("'x' is not an integer", 2, "forward", "--model", "M", "--ids", "1,x")]
    [InlineData("outside the vocabulary", 1, "forward", "--model", "M", "--ids", "1,600")]
    [InlineData("matches no hook", 1, "forward", "--model", "M", "--ids", "1,2", "--capture", "blocks.*.hook_nothing")]
    [InlineData("--top-k needs logits", 2, "forward", "--model", "M", "--ids", "1,2", "--logits", "none", "--top-k", "2")]
    [InlineData("--loss needs at least two ids", 2, "forward", "--model", "M", "--ids", "1", "--loss")]
    [InlineData("no such file or folder", 1, "info", "--model", "/nonexistent/model")]
    [InlineData("unknown command 'genrate'", 2, "genrate")]
    [InlineData("top-p must be in (0, 1]", 1, "generate", "--model", "M", "--prompt-ids", "1", "--max-new-tokens", "3", "--temperature", "1", "--top-p", "1.5")]
    [InlineData("no tokenizer", 1, "generate", "--model", "HF", "--prompt", "hi", "--max-new-tokens", "3")]
    [InlineData("CUDA is not available", 1, "info", "--model", "M", "--device", "cuda:0")]
    [InlineData("is not valid; use cpu, cuda or cuda:N", 1, "info", "--model", "M", "--device", "tpu")]
    public void Bad_input_fails_with_a_clear_message_and_exit_code(string message, int exitCode, params string[] args)
    {
        args = args.Select(a => a == "M" ? StoriesBin : a == "HF" ? StoriesHf : a).ToArray();
        var r = CliRunner.Run([.. args, "--json"]);
        Assert.Equal(exitCode, r.ExitCode);
        Assert.Contains(message, r.Stderr);
        Assert.StartsWith("error: ", r.Stderr);
        Assert.Contains(message, r.Json.GetProperty("error").GetString());
    }

    [Fact]
    public void Train_toy_writes_a_loadable_model_with_its_card()
    {
        string dir = TempFolders.Create("interpmesh-cli-toy-");
        try
        {
            var r = CliRunner.Run("train-toy", "concepts", "--out", dir, "--steps", "30", "--batch", "8", "--seed", "3", "--json");
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.Contains("step 30/30", r.Stderr);
            Assert.Equal("concepts", r.Json.GetProperty("model").GetString());
            Assert.True(r.Json.GetProperty("metrics").GetProperty("agreement_accuracy").GetDouble() >= 0);
            foreach (var file in new[] { "config.json", "model.safetensors", "tokenizer.json", "README.md", "mechanism.json" })
                Assert.True(File.Exists(Path.Combine(dir, file)), $"{file} missing");
            Assert.Contains("interpmesh train-toy concepts --out models/concepts --seed 3 --steps 30", File.ReadAllText(Path.Combine(dir, "README.md")));
            var info = CliRunner.Run("info", "--model", dir, "--json");
            Assert.True(info.ExitCode == 0, info.Stderr);
            Assert.Equal("GPT2LMHeadModel", info.Json.GetProperty("architecture").GetString());
            var ids = CliRunner.Run("tokenize", "--model", dir, "--text", "the dogs are happy", "--json").Json.GetProperty("ids").Ints();
            Assert.Equal(5, ids.Length);
        }
        finally
        {
            TempFolders.Delete(dir);
        }
    }

    [Theory]
    [InlineData("unknown toy model 'inductoin'", "train-toy", "inductoin", "--out", "/tmp/x")]
    [InlineData("train-toy needs a model name", "train-toy", "--out", "/tmp/x")]
    [InlineData("--out is required", "train-toy", "induction")]
    [InlineData("steps must be at least 1", "train-toy", "induction", "--out", "/tmp/x", "--steps", "0")]
    public void Train_toy_bad_input_fails_clearly(string message, params string[] args)
    {
        var r = CliRunner.Run(args);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains(message, r.Stderr);
    }

    [Fact]
    public void The_built_executable_runs_the_readme_command()
    {
        string exe = Path.Combine(AppContext.BaseDirectory, "interpmesh");
        var psi = new ProcessStartInfo(exe, ["generate", "--model", StoriesBin, "--prompt", "Once upon a time", "--max-new-tokens", "55", "--stop-ids", "1", "--json"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var p = Process.Start(psi)!;
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, stderr);
        Assert.Equal(GoldenCase().GetProperty("generated_token_ids").Ints(), JsonDocument.Parse(stdout).RootElement.GetProperty("generated_ids").Ints());
    }
}
