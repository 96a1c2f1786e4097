using System.CommandLine;
using System.Globalization;
using InterpMesh.Bench.Harness;

namespace InterpMesh.Bench.Tests;

/// <summary>
/// Short runs of the benchmarks on tiny models (no timing is asserted) and the harness's set-up and
/// printing. One class: its tests run one after another, so the check that a run leaves no temporary
/// folder of this process behind sees only that run's.
/// </summary>
[Collection(Collection)]
public sealed class BenchRunTests
{
    /// <summary>The tests that run benchmarks (this class and <see cref="LoadTests"/>): one at a time.</summary>
    public const string Collection = "benchmark runs";

    private static readonly string StoriesBin = RepoPaths.Models("stories260K/stories260K.bin");

    private static string[] OwnTempFolders() =>
        [.. Directory.EnumerateDirectories(Path.GetTempPath(), $"interpmesh-bench-p{Environment.ProcessId}-*")];

    [Fact]
    public void Forward_reports_throughput_as_json()
    {
        var r = BenchRunner.Run("forward", "--preset", "gpt2-tiny", "--batch", "2", "--seq", "16", "--iters", "2", "--warmup", "1", "--capture", "blocks.*.hook_resid_post", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.True(r.Json.GetProperty("tokens_per_s").GetDouble() > 0);
        // gpt2-tiny: 2 layers of d_model 64; 2 rows x 16 tokens of float32 per layer, each iteration.
        Assert.Equal(2L * 2 * 16 * 64 * 4, r.Json.GetProperty("captured_bytes_per_iter").GetInt64());
        Assert.Equal("gpt2-tiny", r.Json.GetProperty("preset").GetString());
        Assert.Equal(2, r.Json.GetProperty("iters").GetInt32());
    }

    [Fact]
    public void Circuits_times_attribution_patching_against_a_plain_forward_and_leaves_no_temporary_folder()
    {
        var r = BenchRunner.Run("circuits", "--preset", "gpt2-tiny", "--pairs", "2", "--words", "6", "--repeats", "1", "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        Assert.Equal("2 pairs = 4 rows x 7 tokens", j.GetProperty("batch").GetString()); // 6 words and the word-level tokenizer's BOS
        double plain = j.GetProperty("plain_forward_s").GetDouble(), attribution = j.GetProperty("attribution_patching_s").GetDouble();
        Assert.True(plain > 0 && attribution > 0);
        Assert.Equal(attribution / plain, j.GetProperty("attribution_vs_forward").GetDouble(), 9);
        Assert.Empty(OwnTempFolders());
    }

    [Fact]
    public void Forward_prints_one_line_of_text_without_json()
    {
        var r = BenchRunner.Run("forward", "--preset", "llama-tiny", "--batch", "1", "--seq", "8", "--iters", "1", "--warmup", "0", "--logits", "none");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var line = Assert.Single(r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("llama-tiny batch 1×8, ", line, StringComparison.Ordinal);
        Assert.Contains("logits None, capture none", line, StringComparison.Ordinal);
        Assert.Matches(@": \d+ tokens/s \(", line);
    }

    [Fact]
    public void Patching_computes_fewer_tokens_with_prefix_reuse_and_the_same_logits()
    {
        var r = BenchRunner.Run("patching", "--preset", "gpt2-tiny", "--seq", "8", "--batch", "8", "--iters", "1", "--warmup", "0", "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        // gpt2-tiny: 2 layers × 8 positions = 16 rows, in 2 requests of 8 (positions 0–3, then 4–7).
        Assert.Equal(16, j.GetProperty("rows").GetInt32());
        Assert.Equal(2, j.GetProperty("requests").GetInt32());
        Assert.Equal(16 * 8, j.GetProperty("tokens_without_reuse").GetInt64());
        // Each request: its prefix (8 tokens) plus each row from its patched position on.
        long reused = 8 + 2 * (8 + 7 + 6 + 5) + 8 + 2 * (4 + 3 + 2 + 1);
        Assert.Equal(reused, j.GetProperty("tokens_with_reuse").GetInt64());
        Assert.Equal(2, j.GetProperty("forwards_without_reuse").GetInt64());
        Assert.InRange(j.GetProperty("max_abs_logit_diff").GetDouble(), 0, 1e-4);
        Assert.True(j.GetProperty("ratio_with_vs_without").GetDouble() > 0);
    }

    [Theory]
    [InlineData("in-process")]
    [InlineData("process")] // the figures come back from a child process (this program again), read from its JSON
    public void Gateway_streams_what_the_preset_shape_implies_and_leaves_no_temporary_folder(string client)
    {
        var r = BenchRunner.Run("gateway", "--client", client, "--preset", "gpt2-tiny", "--batch", "1", "--seq", "8", "--iters", "1", "--warmup", "1", "--unary", "10", "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        // Every hook_resid_post of gpt2-tiny: 2 layers x 1 row x 8 tokens x 64 float32; the same-forward
        // baseline captures the last position only (1 of the 8).
        Assert.Equal(2 * 8 * 64 * 4 / 1e6, j.GetProperty("captured_mb").GetDouble(), 9);
        Assert.Equal(2 * 1 * 64 * 4 / 1e6, j.GetProperty("captured_last_position_mb").GetDouble(), 9);
        foreach (var key in new[] { "direct_run_with_capture_s", "gateway_run_with_capture_s", "streaming_throughput_ratio_gateway_vs_direct", "unary_p50_ms_direct", "unary_p99_ms_gateway",
                     "direct_run_capture_last_position_s", "gateway_run_capture_last_position_s", "streaming_throughput_ratio_gateway_vs_direct_paired", "cpu_s_direct_run_with_capture" })
            Assert.True(j.GetProperty(key).GetDouble() > 0, key);
        Assert.Equal("blocks.*.hook_resid_post", j.GetProperty("capture").GetString());
        Assert.Equal(client, j.GetProperty("client").GetString());
        Assert.Empty(OwnTempFolders());
    }

    [Fact]
    public void Stream_captures_what_the_preset_shape_implies_and_batches_concurrent_clients()
    {
        var r = BenchRunner.Run("stream", "--preset", "gpt2-tiny", "--batch", "2", "--seq", "16", "--iters", "1", "--clients", "2", "--client-seq", "8", "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        // Every hook_resid_post of gpt2-tiny: 2 layers x 2 rows x 16 tokens x 64 float32.
        Assert.Equal(2 * 2 * 16 * 64 * 4 / 1e6, j.GetProperty("captured_mb").GetDouble(), 9);
        Assert.Equal("1x8", j.GetProperty("client_request").GetString());
        Assert.Equal(2, j.GetProperty("batch_window_ms").GetInt32());
        Assert.InRange(j.GetProperty("mean_forward_batch_with_clients").GetDouble(), 1, 2);
        Assert.True(j.GetProperty("run_with_capture_seconds").GetDouble() > 0);
        Assert.Empty(OwnTempFolders());
    }

    [Fact]
    public void Python_client_receives_what_the_dotnet_client_receives_and_reports_the_ratio()
    {
        // Runs bench/python/run_with_cache_bench.py under Debian's Python (python3-grpcio); the benchmark
        // fails unless both clients received the same activation bytes.
        var r = BenchRunner.Run("python-client", "--preset", "gpt2-tiny", "--batch", "2", "--seq", "16", "--iters", "2", "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        Assert.Equal(2 * 2 * 16 * 64 * 4 / 1e6, j.GetProperty("captured_mb").GetDouble(), 9);
        Assert.Equal(2, j.GetProperty("calls_per_client").GetInt32());
        Assert.Equal(j.GetProperty("python_seconds").GetDouble() / j.GetProperty("dotnet_seconds").GetDouble(), j.GetProperty("python_vs_dotnet_ratio").GetDouble(), 6);
        Assert.Empty(OwnTempFolders());
    }

    [Fact]
    public void Jobs_runs_both_topologies_on_postgresql_and_reports_throughput_ratio_and_latency()
    {
        // A few seconds: one slot per worker, short jobs, two progress reports each (no timing is asserted).
        var r = BenchRunner.Run("jobs", "--seconds", "3", "--warmup-seconds", "1", "--slots", "1", "--in-flight-per-slot", "3",
            "--job-ms", "40", "--reports", "2", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        foreach (var topology in new[] { "1x1", "2x2" })
        {
            Assert.True(j.GetProperty($"jobs_completed_{topology}").GetInt64() > 0, topology);
            Assert.True(j.GetProperty($"jobs_per_second_{topology}").GetDouble() > 0, topology);
            Assert.True(j.GetProperty($"watch_latency_p50_ms_{topology}").GetDouble() <= j.GetProperty($"watch_latency_p99_ms_{topology}").GetDouble(), topology);
        }
        Assert.True(j.GetProperty("ratio_2x2_vs_1x1").GetDouble() > 0);
        Assert.True(j.GetProperty("latency_events").GetInt32() > 0);
        double p50 = j.GetProperty("watch_latency_p50_ms").GetDouble(), p99 = j.GetProperty("watch_latency_p99_ms").GetDouble();
        Assert.InRange(p50, 0, p99);
        Assert.True(p99 > 0);
        Assert.Equal(1, j.GetProperty("slots_per_worker").GetInt32());
        Assert.Equal(250, j.GetProperty("worker_poll_ms").GetInt32());
        Assert.Empty(OwnTempFolders());
        // The PostgreSQL cluster is stopped and removed too.
        Assert.Empty(Directory.EnumerateDirectories(Path.GetTempPath(), $"interpmesh-pgcluster.p{Environment.ProcessId}-*"));
    }

    [Fact]
    public void Without_the_postgresql_server_the_jobs_benchmark_says_what_to_install()
    {
        var e = Assert.Throws<InvalidOperationException>(() => InterpMesh.Tests.PostgresServer.FindBin("/nonexistent/postgresql", "The `jobs` benchmark needs"));
        Assert.Contains("The `jobs` benchmark needs Debian's postgresql package (`apt-get install postgresql`", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Serving_runs_every_measure_and_reports_json()
    {
        // A smoke run with tiny settings: every measure completes and reports (no timing is asserted).
        var r = BenchRunner.Run("serving", "--model", StoriesBin, "--iters", "5", "--long-tokens", "24", "--gen-tokens", "4",
            "--clients", "2", "--rounds", "1", "--stall-capture", "blocks.0.*", "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        foreach (var key in new[] { "run_idle_p50_ms", "run_during_generate_ratio", "run_during_stall_ratio", "generate_1_client_tokens_per_s",
            "generate_2_clients_tokens_per_s", "generate_clients_ratio", "engine_generate_ratio" })
            Assert.True(j.GetProperty(key).GetDouble() > 0, key);
        Assert.Equal(2, j.GetProperty("clients").GetInt32());
    }

    [Fact]
    public void A_benchmark_that_fails_midway_still_stops_its_service_and_deletes_its_model()
    {
        // The preset's model is written and served before the request sizes are checked against its context (128).
        var r = BenchRunner.Run("serving", "--preset", "gpt2-tiny", "--prompt-length", "100", "--long-tokens", "100", "--only", "idle", "--threads", "1");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--prompt-length + --long-tokens must fit the model's context of 128", r.Stderr, StringComparison.Ordinal);
        Assert.Empty(OwnTempFolders());
    }

    [Theory]
    [InlineData("float32", 4)]
    [InlineData("bfloat16", 2)]
    public void The_loading_benchmarks_child_reports_one_load_in_the_dtype_asked(string dtype, int bytesPerParameter)
    {
        // What the loading benchmark's parent starts per dtype (hidden options), on a small checkpoint.
        var r = BenchRunner.Run("loading", "--child", RepoPaths.Models("stories260K-hf"), "--dtype", dtype, "--threads", "1", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var j = r.Json;
        Assert.Equal(dtype, j.GetProperty("dtype").GetString());
        long parameters = j.GetProperty("parameters").GetInt64();
        Assert.InRange(parameters, 250_000, 270_000);   // stories260K
        Assert.Equal(bytesPerParameter * parameters, j.GetProperty("weight_bytes").GetInt64());
        Assert.Equal(j.GetProperty("peak_rss_bytes").GetInt64() - j.GetProperty("baseline_rss_bytes").GetInt64(), j.GetProperty("peak_above_baseline_bytes").GetInt64());
    }

    [Fact]
    public void The_context_names_its_temporary_folders_after_this_process_and_deletes_them()
    {
        string[] made;
        using (var context = new BenchContext(new RootCommand().Parse([]), TextWriter.Null, json: false, requestedThreads: null))
        {
            made = [context.TempFolder(), context.TempFolder()];
            Assert.All(made, f => Assert.True(Directory.Exists(f), f));
            Assert.NotEqual(made[0], made[1]);
            foreach (var folder in made)
            {
                var match = BenchContext.TempFolderName().Match(Path.GetFileName(folder));
                Assert.True(match.Success, folder);
                Assert.Equal(Environment.ProcessId.ToString(CultureInfo.InvariantCulture), match.Groups[1].Value);
            }
            File.WriteAllText(Path.Combine(made[0], "file"), "x");
        }
        Assert.All(made, f => Assert.False(Directory.Exists(f), f));
    }

    [Fact]
    public void The_text_printer_aligns_one_line_per_value()
    {
        var stdout = new StringWriter();
        ReportPrinter.Print(new BenchReport(new Dictionary<string, object?> { ["a"] = 1.5, ["longer_key"] = "x", ["n"] = null, ["count"] = 12, ["ok"] = true }), json: false, stdout);
        Assert.Equal("  a           1.5\n  longer_key  x\n  n           -\n  count       12\n  ok          true\n", stdout.ToString().ReplaceLineEndings("\n"));

        var json = new StringWriter();
        ReportPrinter.Print(new BenchReport(new Dictionary<string, object?> { ["a"] = 1.5, ["name"] = "naïve" }, _ => throw new InvalidOperationException("text asked for")), json: true, json);
        Assert.Equal("{\"a\":1.5,\"name\":\"naïve\"}\n", json.ToString().ReplaceLineEndings("\n"));
    }
}
