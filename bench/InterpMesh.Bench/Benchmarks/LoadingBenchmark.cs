using System.Buffers.Binary;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using InterpMesh.Bench.Harness;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench loading</c>: writes a random ~1.0B-parameter Llama-layout checkpoint in the
/// Hugging Face sharded layout (streamed to disk, reused when present), then loads it in a child
/// process per dtype (so the generator's memory is not counted) and reports seconds, peak resident
/// memory (VmHWM) above the pre-load baseline, the final weight bytes, and their ratio.
/// </summary>
internal sealed class LoadingBenchmark : Benchmark
{
    // Llama layout, 1.003B parameters: d_model 2048, 16 layers, 16 heads of 128, SwiGLU 6144,
    // vocabulary 32000, untied unembedding.
    private const int DModel = 2048, Layers = 16, Heads = 16, KvHeads = 16, DMlp = 6144, Vocab = 32000, Shards = 4;

    private readonly Option<string?> dirOption = new("--dir") { Description = "checkpoint folder (default $TMPDIR/interpmesh-bench-loading-<source dtype>, kept for the next run)", HelpName = "DIR" };
    private readonly Option<string> sourceDtypeOption = SharedOptions.Choice("--source-dtype", "bf16", "dtype of the checkpoint on disk", "bf16", "f32");
    private readonly Option<int> repeatsOption = SharedOptions.Int("--repeats", 1, 1, "loads per dtype", "R");
    // The child process's options (one load, measured): not for users, so not in the help.
    private readonly Option<string?> childOption = new("--child") { Hidden = true };
    private readonly Option<string> dtypeOption = SharedOptions.DType();

    public LoadingBenchmark()
        : base("loading", "Checkpoint loading time and peak memory of a ~1B-parameter Llama-layout checkpoint, in float32 and bfloat16 (Linux).")
    {
        dtypeOption.Hidden = true;
        Takes(dirOption, sourceDtypeOption, repeatsOption, childOption, dtypeOption);
    }

    public override BenchReport Run(BenchContext context)
    {
        string? child = context.Get(childOption);
        if (child is not null)
            return RunChild(child, context);

        string sourceDtype = context.Get(sourceDtypeOption);
        string dir = Path.GetFullPath(context.Get(dirOption) ?? Path.Combine(Path.GetTempPath(), $"interpmesh-bench-loading-{sourceDtype}"));
        int repeats = context.Get(repeatsOption);
        // The loads run in child processes: this one needs no libtorch threads of its own.
        int threads = context.RequestedThreads ?? 2;
        bool json = context.Json;
        var stdout = context.Out;

        var sw = Stopwatch.StartNew();
        bool reused = Generate(dir, sourceDtype);
        double generateSeconds = sw.Elapsed.TotalSeconds;
        long diskBytes = Directory.GetFiles(dir, "*.safetensors").Sum(f => new FileInfo(f).Length);
        if (!json)
            stdout.WriteLine($"load average {LoadAverage()}; checkpoint: {dir} ({diskBytes / 1e9:F2} GB of {sourceDtype.ToUpperInvariant()} in {Shards} shards, {(reused ? "reused" : $"written in {generateSeconds:F1} s")})");

        var runs = new JsonArray();
        foreach (var dtype in new[] { "float32", "bfloat16" })
        {
            for (int r = 0; r < repeats; r++)
            {
                var result = Child(dir, dtype, threads);
                runs.Add(result);
                if (!json)
                {
                    stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {dtype,-9} {result["seconds"]!.GetValue<double>(),6:F2} s (cpu {result["cpu_seconds"]!.GetValue<double>():F2} s)  weights {Gb(result, "weight_bytes")} GB  peak RSS {Gb(result, "peak_rss_bytes")} GB (baseline {Gb(result, "baseline_rss_bytes")} GB)  "
                        + $"peak above baseline {Gb(result, "peak_above_baseline_bytes")} GB  ratio {result["ratio"]!.GetValue<double>():F3}"));
                }
            }
        }
        var report = new JsonObject
        {
            ["checkpoint"] = dir,
            ["source_dtype"] = sourceDtype,
            ["parameters"] = ParameterCount(),
            ["shards"] = Shards,
            ["disk_bytes"] = diskBytes,
            ["threads"] = threads,
            ["load_average"] = LoadAverage(),
            ["runs"] = runs,
            ["reference_transformerlens_ratio"] = 2.0,
            ["target_ratio"] = 1.2,
        };
        return new BenchReport(report.ToDictionary(kv => kv.Key, kv => (object?)kv.Value),
            stdout => stdout.WriteLine($"ratio = (VmHWM - RSS before loading) / final weight bytes; target <= 1.2 (TransformerLens needs about 2x). Delete {dir} when done."));
    }

    private static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

    private static string Gb(JsonNode n, string key) => (n[key]!.GetValue<long>() / 1e9).ToString("F3", CultureInfo.InvariantCulture);

    private static long ParameterCount() =>
        2L * Vocab * DModel + DModel + Layers * (2L * DModel + (long)(Heads + 2 * KvHeads) * 128 * DModel + (long)Heads * 128 * DModel + 3L * DModel * DMlp);

    /// <summary>Runs one load in a fresh process and returns what it measured.</summary>
    private static JsonNode Child(string dir, string dtype, int threads) =>
        SelfProcess.Run("loading", "loading", "--child", dir, "--dtype", dtype, "--threads", threads.ToString(CultureInfo.InvariantCulture));

    /// <summary>The child: measure the RSS baseline, load, and report the peak.</summary>
    private BenchReport RunChild(string dir, BenchContext context)
    {
        string dtypeName = context.Get(dtypeOption);
        var dtype = SharedOptions.DTypeOf(dtypeName);
        _ = context.Threads;
        using (zeros(1)) { } // libtorch fully initialised before the baseline
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long baseline = Status("VmRSS");
        // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+); if it is refused,
        // the peak also covers start-up, which only overstates the ratio.
        bool reset;
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            reset = true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            reset = false;
        }
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        using var model = ModelLoader.Load(dir, dtype: dtype);
        double seconds = sw.Elapsed.TotalSeconds;
        double cpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds;
        long peak = Status("VmHWM");
        long after = Status("VmRSS");
        long weightBytes = model.Transformer.Weights.ByteCount;
        return new BenchReport(new Dictionary<string, object?>
        {
            ["dtype"] = dtypeName,
            ["seconds"] = seconds,
            ["cpu_seconds"] = cpuSeconds,
            ["parameters"] = model.Transformer.Weights.ParameterCount,
            ["weight_bytes"] = weightBytes,
            ["baseline_rss_bytes"] = baseline,
            ["peak_rss_bytes"] = peak,
            ["rss_after_bytes"] = after,
            ["rss_after_anon_bytes"] = Status("RssAnon"),
            ["rss_after_file_bytes"] = Status("RssFile"),
            ["peak_above_baseline_bytes"] = peak - baseline,
            ["ratio"] = (double)(peak - baseline) / weightBytes,
            ["hwm_reset"] = reset,
        });
    }

    /// <summary>A <c>kB</c> field of /proc/self/status, in bytes.</summary>
    private static long Status(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        }
        throw new InvalidOperationException($"/proc/self/status has no {field} (this benchmark needs Linux)");
    }

    // ---- the checkpoint ---------------------------------------------------------------------------

    private sealed record Planned(string Name, long[] Shape, bool IsNorm);

    private static List<Planned> Plan()
    {
        var list = new List<Planned> { new("model.embed_tokens.weight", [Vocab, DModel], false) };
        for (int l = 0; l < Layers; l++)
        {
            string h = $"model.layers.{l}.";
            list.Add(new(h + "input_layernorm.weight", [DModel], true));
            list.Add(new(h + "self_attn.q_proj.weight", [Heads * 128, DModel], false));
            list.Add(new(h + "self_attn.k_proj.weight", [KvHeads * 128, DModel], false));
            list.Add(new(h + "self_attn.v_proj.weight", [KvHeads * 128, DModel], false));
            list.Add(new(h + "self_attn.o_proj.weight", [DModel, Heads * 128], false));
            list.Add(new(h + "post_attention_layernorm.weight", [DModel], true));
            list.Add(new(h + "mlp.gate_proj.weight", [DMlp, DModel], false));
            list.Add(new(h + "mlp.up_proj.weight", [DMlp, DModel], false));
            list.Add(new(h + "mlp.down_proj.weight", [DModel, DMlp], false));
        }
        list.Add(new("model.norm.weight", [DModel], true));
        list.Add(new("lm_head.weight", [Vocab, DModel], false));
        return list;
    }

    /// <summary>
    /// Writes the checkpoint unless a complete one (its index, written last, names this layout) is
    /// already there. Values are streamed to disk in 4 MB buffers: the generator never holds a tensor.
    /// Returns true when an existing checkpoint was reused.
    /// </summary>
    private static bool Generate(string dir, string sourceDtype)
    {
        string indexPath = Path.Combine(dir, "model.safetensors.index.json");
        string layout = $"llama d{DModel} L{Layers} h{Heads}/{KvHeads} mlp{DMlp} v{Vocab} {sourceDtype} x{Shards}";
        if (File.Exists(indexPath))
        {
            try
            {
                var existing = JsonNode.Parse(File.ReadAllText(indexPath));
                if (existing?["metadata"]?["interpmesh_bench"]?.GetValue<string>() == layout)
                    return true;
            }
            catch (JsonException)
            {
            }
            File.Delete(indexPath);
        }
        Directory.CreateDirectory(dir);
        int size = sourceDtype == "bf16" ? 2 : 4;
        var plan = Plan();
        long total = plan.Sum(t => t.Shape.Aggregate(1L, (a, d) => a * d) * size);
        var weightMap = new JsonObject();
        var rng = new XorShift(0x9E3779B97F4A7C15UL);
        int next = 0;
        for (int s = 0; s < Shards; s++)
        {
            var tensors = new List<Planned>();
            long bytes = 0;
            long target = total / Shards;
            while (next < plan.Count && (s == Shards - 1 || bytes < target))
            {
                var t = plan[next++];
                tensors.Add(t);
                bytes += t.Shape.Aggregate(1L, (a, d) => a * d) * size;
            }
            string file = $"model-{s + 1:D5}-of-{Shards:D5}.safetensors";
            WriteShard(Path.Combine(dir, file), tensors, sourceDtype, size, rng);
            foreach (var t in tensors)
                weightMap[t.Name] = file;
        }
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["hidden_size"] = DModel,
            ["intermediate_size"] = DMlp,
            ["num_hidden_layers"] = Layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = 2048,
            ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = 10000.0,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = sourceDtype == "bf16" ? "bfloat16" : "float32",
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = total, ["interpmesh_bench"] = layout },
            ["weight_map"] = weightMap,
        };
        File.WriteAllText(indexPath, index.ToJsonString());
        return false;
    }

    private static void WriteShard(string path, List<Planned> tensors, string sourceDtype, int size, XorShift rng)
    {
        var header = new JsonObject { ["__metadata__"] = new JsonObject { ["format"] = "pt" } };
        long offset = 0;
        foreach (var t in tensors)
        {
            long bytes = t.Shape.Aggregate(1L, (a, d) => a * d) * size;
            header[t.Name] = new JsonObject
            {
                ["dtype"] = sourceDtype == "bf16" ? "BF16" : "F32",
                ["shape"] = new JsonArray([.. t.Shape.Select(d => (JsonNode)d)]),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (headerBytes.Length + 7) / 8 * 8;
        string tmp = path + ".tmp";
        using (var file = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
            file.Write(len);
            file.Write(headerBytes);
            for (int i = headerBytes.Length; i < padded; i++)
                file.WriteByte((byte)' ');
            var buffer = new byte[4 << 20];
            foreach (var t in tensors)
            {
                long left = t.Shape.Aggregate(1L, (a, d) => a * d);
                int perBuffer = buffer.Length / size;
                while (left > 0)
                {
                    int n = (int)Math.Min(perBuffer, left);
                    for (int i = 0; i < n; i++)
                    {
                        // Norm gains 1; other weights uniform in [-0.02, 0.02).
                        float v = t.IsNorm ? 1f : (float)((rng.Next() >> 11) * (1.0 / (1UL << 53)) * 0.04 - 0.02);
                        if (size == 2)
                            BinaryPrimitives.WriteUInt16LittleEndian(buffer.AsSpan(2 * i), (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16));
                        else
                            BinaryPrimitives.WriteSingleLittleEndian(buffer.AsSpan(4 * i), v);
                    }
                    file.Write(buffer, 0, n * size);
                    left -= n;
                }
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    private sealed class XorShift(ulong state)
    {
        public ulong Next()
        {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            return state;
        }
    }
}
