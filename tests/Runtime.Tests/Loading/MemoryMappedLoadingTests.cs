using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Loading;

/// <summary>
/// The memory-mapped, slice-by-slice loading path against a second path written here: the files'
/// bytes are read and written by this class's own safetensors code, and dtype conversions are
/// computed bit by bit in C#.
/// </summary>
public sealed class MemoryMappedLoadingTests : TorchTest
{
    // ---- a second safetensors reader and writer ------------------------------------------------

    /// <summary>Each tensor's raw bytes, dtype and shape, parsed here without SafeTensorsFile.</summary>
    private static Dictionary<string, (string DType, long[] Shape, byte[] Bytes)> RawTensors(string path)
    {
        var file = File.ReadAllBytes(path);
        int headerLength = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
        using var header = JsonDocument.Parse(file.AsMemory(8, headerLength));
        var result = new Dictionary<string, (string, long[], byte[])>();
        foreach (var p in header.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__"))
        {
            long begin = p.Value.GetProperty("data_offsets")[0].GetInt64(), end = p.Value.GetProperty("data_offsets")[1].GetInt64();
            result[p.Name] = (p.Value.GetProperty("dtype").GetString()!, p.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray(),
                file[(int)(8 + headerLength + begin)..(int)(8 + headerLength + end)]);
        }
        return result;
    }

    private static void WriteRaw(string path, params (string Name, string DType, long[] Shape, byte[] Bytes)[] tensors)
    {
        var header = new Dictionary<string, object>();
        long offset = 0;
        foreach (var t in tensors)
        {
            header[t.Name] = new { dtype = t.DType, shape = t.Shape, data_offsets = new[] { offset, offset + t.Bytes.Length } };
            offset += t.Bytes.Length;
        }
        var json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes((ulong)json.Length));
        f.Write(json);
        foreach (var t in tensors)
            f.Write(t.Bytes);
    }

    /// <summary>Byte-for-byte equality, reporting the first difference (not megabytes of both).</summary>
    private static void SameBytes(byte[] expected, byte[] actual, string what = "")
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} bytes, expected {expected.Length}");
        int i = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(i == expected.Length, i == expected.Length ? "" : $"{what}: byte {i} is 0x{actual[i]:X2}, expected 0x{expected[i]:X2}");
    }

    private static byte[] Bytes(Tensor t)
    {
        using var c = t.contiguous();
        return c.bytes.ToArray();
    }

    /// <summary>Random finite float32 bit patterns of normal numbers (both signs, all exponents) plus ±0 and ±∞.</summary>
    private static uint[] RandomFloatBits(int n, int seed)
    {
        var rng = new Random(seed);
        var bits = new uint[n];
        for (int i = 0; i < n; i++)
        {
            uint exponent = (uint)rng.Next(1, 255), mantissa = (uint)rng.Next(1 << 23), sign = (uint)rng.Next(2);
            bits[i] = sign << 31 | exponent << 23 | mantissa;
        }
        bits[0] = 0; bits[1] = 0x8000_0000; bits[2] = 0x7F80_0000; bits[3] = 0xFF80_0000;
        bits[4] = 0x3F80_8000; // exactly halfway between two bfloat16s, even below: rounds down
        bits[5] = 0x3F81_8000; // halfway, odd below: rounds up
        bits[6] = 0x7F7F_FFFF; // largest float32 rounds to +∞ in bfloat16
        return bits;
    }

    private static byte[] ToBytes<T>(T[] values) where T : struct => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    private static T[] FromBytes<T>(byte[] bytes) where T : struct => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(bytes).ToArray();

    /// <summary>float32 → bfloat16, round to nearest even (finite inputs and ±∞).</summary>
    private static ushort Bf16(uint f) => (ushort)((f + 0x7FFF + ((f >> 16) & 1)) >> 16);

    // ---- bit-identical loading -----------------------------------------------------------------

    [Fact]
    public void Sharded_llama_weights_are_the_file_bytes_with_qkv_and_gate_up_fused_in_order()
    {
        using var dir = new TempFolder();
        var shape = new HfCheckpointWriter.Shape();
        var weights = HfCheckpointWriter.LlamaFamily("LlamaForCausalLM", shape, false, seed: 21);
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig("LlamaForCausalLM", shape, false), weights, shards: 3);

        // Gather the stored bytes by name across the shards with this class's own reader.
        using var index = JsonDocument.Parse(File.ReadAllText(dir.File("model.safetensors.index.json")));
        var shardOf = index.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        var raw = shardOf.Values.Distinct().SelectMany(s => RawTensors(dir.File(s))).ToDictionary(kv => kv.Key, kv => kv.Value.Bytes);
        // The fused matrices' parts really lie in different shards.
        Assert.True(new[] { "q_proj", "k_proj", "v_proj" }.Select(p => shardOf[$"model.layers.1.self_attn.{p}.weight"]).Distinct().Count() > 1);

        using var model = ModelLoader.Load(dir.Path);
        var w = model.Transformer.Weights;
        SameBytes(raw["model.embed_tokens.weight"], Bytes(w.Embed));
        // Linear weights and the unembedding are held [in, out]: transposed back, they are the stored bytes.
        SameBytes(raw["lm_head.weight"], Bytes(w.Unembed.t().contiguous()));
        SameBytes(raw["model.norm.weight"], Bytes(w.LnFinalWeight));
        for (int l = 0; l < shape.Layers; l++)
        {
            string h = $"model.layers.{l}.";
            var b = w.Blocks[l];
            SameBytes([.. raw[h + "self_attn.q_proj.weight"], .. raw[h + "self_attn.k_proj.weight"], .. raw[h + "self_attn.v_proj.weight"]], Bytes(b.Qkv.t().contiguous()));
            SameBytes([.. raw[h + "mlp.gate_proj.weight"], .. raw[h + "mlp.up_proj.weight"]], Bytes(b.MlpIn.t().contiguous()));
            SameBytes(raw[h + "self_attn.o_proj.weight"], Bytes(b.Out.t().contiguous()));
            SameBytes(raw[h + "mlp.down_proj.weight"], Bytes(b.MlpOut.t().contiguous()));
            SameBytes(raw[h + "input_layernorm.weight"], Bytes(b.Ln1Weight!));
            SameBytes(raw[h + "post_attention_layernorm.weight"], Bytes(b.Ln2Weight!));
        }
    }

    [Fact]
    public void Gpt2_conv1d_weights_are_the_stored_matrices_and_their_linear_view_the_transpose()
    {
        var raw = RawTensors(RepoPaths.Fixture("gpt2-tiny/model.safetensors"));
        using var model = ModelLoader.Load(RepoPaths.Fixture("gpt2-tiny"));
        string p = raw.ContainsKey("transformer.h.0.attn.c_attn.weight") ? "transformer." : "";
        for (int l = 0; l < 2; l++)
        {
            foreach (var (name, loaded) in new[] { ("attn.c_attn", model.Transformer.Weights.Blocks[l].Qkv), ("mlp.c_fc", model.Transformer.Weights.Blocks[l].MlpIn), ("mlp.c_proj", model.Transformer.Weights.Blocks[l].MlpOut) })
            {
                var (_, shape, bytes) = raw[$"{p}h.{l}.{name}.weight"];
                var stored = FromBytes<float>(bytes);
                long rows = shape[0], cols = shape[1];
                var transposed = new float[stored.Length];
                for (long r = 0; r < rows; r++)
                    for (long c = 0; c < cols; c++)
                        transposed[c * rows + r] = stored[r * cols + c];
                // Conv1D's [in, out] is the compute layout: held as stored, without a copy's change...
                Assert.Equal(new[] { rows, cols }, loaded.shape);
                SameBytes(bytes, Bytes(loaded));
                // ...and read as nn.Linear's [out, in], it is the stored matrix transposed.
                SameBytes(ToBytes(transposed), Bytes(loaded.t().contiguous()));
            }
        }
    }

    // ---- conversions, across slice boundaries --------------------------------------------------

    // 5.1M elements: 20 MB as float32, more than one 16 MB slice.
    private const int Big = 5_100_000;

    [Fact]
    public void Float32_to_bfloat16_rounds_to_nearest_even_like_a_second_computation()
    {
        Assert.True(Big * 4L > TensorIO.SliceBytes);
        using var dir = new TempFolder();
        var bits = RandomFloatBits(Big, 1);
        WriteRaw(dir.File("x.safetensors"), ("w", "F32", [Big], ToBytes(bits)));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        using var t = f.Read("w", ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, t.dtype);
        var got = FromBytes<ushort>(Bytes(t));
        int bad = Enumerable.Range(0, Big).FirstOrDefault(i => got[i] != Bf16(bits[i]), -1);
        Assert.True(bad < 0, bad < 0 ? "" : $"element {bad}: 0x{bits[bad]:X8} -> 0x{got[bad]:X4}, expected 0x{Bf16(bits[bad]):X4}");
    }

    [Fact]
    public void Bfloat16_to_float32_is_exact()
    {
        using var dir = new TempFolder();
        var source = RandomFloatBits(Big, 2).Select(b => (ushort)(b >> 16)).ToArray();
        WriteRaw(dir.File("x.safetensors"), ("w", "BF16", [Big / 100, 100], ToBytes(source)));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        using var t = f.Read("w", ScalarType.Float32);
        Assert.Equal(new long[] { Big / 100, 100 }, t.shape);
        SameBytes(ToBytes(source.Select(b => (uint)b << 16).ToArray()), Bytes(t));
    }

    [Fact]
    public void Float16_to_float32_is_exact()
    {
        using var dir = new TempFolder();
        var rng = new Random(3);
        // Every finite half except NaNs' patterns: exponent 0..30 (subnormals included).
        var source = Enumerable.Range(0, Big).Select(_ => (ushort)(rng.Next(2) << 15 | rng.Next(31) << 10 | rng.Next(1 << 10))).ToArray();
        WriteRaw(dir.File("x.safetensors"), ("w", "F16", [Big], ToBytes(source)));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        using var t = f.Read("w", ScalarType.Float32);
        var expected = source.Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();
        SameBytes(ToBytes(expected), Bytes(t));
    }

    [Fact]
    public void Transposed_read_across_slices_with_conversion()
    {
        using var dir = new TempFolder();
        const int rows = 9000, cols = 600; // 21.6 MB of float32: two slices of whole rows
        var bits = RandomFloatBits(rows * cols, 4);
        WriteRaw(dir.File("x.safetensors"), ("w", "F32", [rows, cols], ToBytes(bits)));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        using var same = f.ReadTransposed("w", ScalarType.Float32);
        using var half = f.ReadTransposed("w", ScalarType.BFloat16);
        var expected = new uint[bits.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                expected[c * rows + r] = bits[r * cols + c];
        Assert.Equal(new long[] { cols, rows }, same.shape);
        SameBytes(ToBytes(expected), Bytes(same));
        SameBytes(ToBytes(expected.Select(Bf16).ToArray()), Bytes(half));
    }

    [Fact]
    public void Reading_into_a_slice_fills_only_that_slice()
    {
        using var dir = new TempFolder();
        WriteRaw(dir.File("x.safetensors"), ("a", "F32", [2, 3], ToBytes(new float[] { 1, 2, 3, 4, 5, 6 })));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        using var dest = full(4, 3, -1f);
        using (var rows = dest.narrow(0, 1, 2))
            f.ReadInto("a", rows);
        Assert.Equal(new float[] { -1, -1, -1, 1, 2, 3, 4, 5, 6, -1, -1, -1 }, dest.data<float>().ToArray());
        using var wrong = zeros(5);
        Assert.Throws<ArgumentException>(() => f.ReadInto("a", wrong));
    }

    // ---- bad files -----------------------------------------------------------------------------

    private static TempFolder ShardedLlama()
    {
        var dir = new TempFolder();
        var shape = new HfCheckpointWriter.Shape();
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig("LlamaForCausalLM", shape, false), HfCheckpointWriter.LlamaFamily("LlamaForCausalLM", shape, false, seed: 22), shards: 3);
        return dir;
    }

    [Fact]
    public void Truncated_shard_is_named_in_a_clear_error()
    {
        using var dir = ShardedLlama();
        string shard = dir.File("model-00002-of-00003.safetensors");
        var bytes = File.ReadAllBytes(shard);
        File.WriteAllBytes(shard, bytes[..(bytes.Length - 100)]);
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path).Dispose());
        Assert.EndsWith("model-00002-of-00003.safetensors", e.FilePath);
        Assert.Contains("outside", e.Problem);
        Assert.Contains("truncated", e.Problem);
    }

    [Fact]
    public void Header_offsets_past_the_end_are_refused_at_open()
    {
        using var dir = new TempFolder();
        var header = Encoding.UTF8.GetBytes("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[1024,1040]}}""");
        File.WriteAllBytes(dir.File("x.safetensors"), [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. new byte[16]]);
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(dir.File("x.safetensors")));
        Assert.Contains("tensor 'a'", e.Problem);
        Assert.Contains("[1024, 1040] lie outside the 16 data bytes", e.Problem);
    }

    [Fact]
    public void File_cut_short_after_it_was_opened_is_an_error_not_a_crash()
    {
        using var dir = new TempFolder();
        WriteRaw(dir.File("x.safetensors"), ("a", "F32", [1000], new byte[4000]), ("b", "F32", [1000], new byte[4000]));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        f.Read("a").Dispose(); // the file is mapped now
        using (var cut = new FileStream(dir.File("x.safetensors"), FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            cut.SetLength(cut.Length - 2000);
        var e = Assert.Throws<ModelFormatException>(() => f.Read("b", ScalarType.BFloat16));
        Assert.Contains("truncated while reading tensor 'b'", e.Problem);
    }

    [Fact]
    public void Index_naming_a_missing_shard_or_a_tensor_the_shard_lacks()
    {
        using var dir = ShardedLlama();
        File.Delete(dir.File("model-00003-of-00003.safetensors"));
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path).Dispose());
        Assert.Contains("shard 'model-00003-of-00003.safetensors' named in weight_map does not exist", e.Problem);

        using var other = ShardedLlama();
        var index = File.ReadAllText(other.File("model.safetensors.index.json"));
        var moved = JsonDocument.Parse(index).RootElement.GetProperty("weight_map").EnumerateObject().First(p => p.Value.GetString() == "model-00001-of-00003.safetensors").Name;
        index = index.Replace($"\"{moved}\":\"model-00001-of-00003.safetensors\"", $"\"{moved}\":\"model-00002-of-00003.safetensors\"", StringComparison.Ordinal);
        File.WriteAllText(other.File("model.safetensors.index.json"), index);
        e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(other.Path).Dispose());
        Assert.Contains($"missing tensor '{moved}' (the index says it is in this shard)", e.Problem);
    }

    [Fact]
    public void Fused_parts_of_different_widths_are_refused_before_anything_is_read()
    {
        using var dir = new TempFolder();
        var shape = new HfCheckpointWriter.Shape();
        var weights = HfCheckpointWriter.LlamaFamily("LlamaForCausalLM", shape, false, seed: 23);
        weights["model.layers.0.self_attn.k_proj.weight"] = zeros(16, 31);
        HfCheckpointWriter.Save(dir.Path, HfCheckpointWriter.LlamaConfig("LlamaForCausalLM", shape, false), weights);
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.Path).Dispose());
        Assert.Contains("projections that must share their input size have shapes [32, 32]; [16, 31]; [16, 32]", e.Problem);
    }
}
