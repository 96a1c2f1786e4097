using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Plugins.Testing;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Tests;

/// <summary>
/// The SDK's safetensors calls: the bytes are the format's (checked against a layout written out
/// by hand here), files cross between the SDK and the runtime's loader both ways, bad files get an
/// error naming them, and the save-and-dispose call releases the tensors whatever happens.
/// </summary>
public sealed class SafeTensorsSdkTests
{
    private static string TempFile() => Path.Combine(Path.GetTempPath(), $"interpmesh-sdk-p{Environment.ProcessId}-{Guid.NewGuid():N}.safetensors");

    private static Dictionary<string, Tensor> EveryDType() => new()
    {
        ["f64"] = tensor(new[] { 1.5, -2.25 }),
        ["f32"] = arange(6, dtype: ScalarType.Float32).view(2, 3) / 4,
        ["f16"] = tensor(new[] { 0.5f, 3f }).to_type(ScalarType.Float16),
        ["bf16"] = tensor(new[] { -1f, 8f, 0.25f }).to_type(ScalarType.BFloat16),
        ["i64"] = tensor(new[] { long.MaxValue, -7L }),
        ["i32"] = tensor(new[] { int.MinValue, 5 }),
        ["i16"] = tensor(new short[] { -300, 301 }),
        ["i8"] = tensor(new sbyte[] { -128, 127 }),
        ["u8"] = tensor(new byte[] { 0, 255 }),
        ["bool"] = tensor(new[] { true, false, true }),
        ["empty"] = zeros(0, 4),
    };

    private static void AssertSame(IReadOnlyDictionary<string, Tensor> expected, IReadOnlyDictionary<string, Tensor> actual)
    {
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, e) in expected)
        {
            var a = actual[name];
            Assert.Equal(e.dtype, a.dtype);
            Assert.Equal(e.shape, a.shape);
            using var same = a.eq(e).all();
            Assert.True(same.item<bool>(), $"tensor '{name}' differs after the round trip");
        }
    }

    private static void DisposeAll(IEnumerable<Tensor> tensors)
    {
        foreach (var t in tensors)
            t.Dispose();
    }

    [Fact]
    public void The_bytes_are_the_formats_layout()
    {
        using var a = tensor(new[] { 1f, 2f });
        var bytes = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["a"] = a }, new JsonObject { ["format"] = "pt", ["layer"] = 3 });
        // Written out by hand from the format's description: u64 header length, JSON, spaces to a
        // multiple of 8, then the little-endian data.
        const string header = """{"__metadata__":{"format":"pt","layer":"3"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""";
        string padded = header.PadRight((header.Length + 7) / 8 * 8);
        byte[] expected = [.. BitConverter.GetBytes((ulong)padded.Length), .. Encoding.UTF8.GetBytes(padded), 0, 0, 0x80, 0x3F, 0, 0, 0, 0x40];
        Assert.Equal(expected, bytes);
    }

    [Fact]
    public async Task The_SDK_call_round_trips_every_dtype_through_an_artifact_store_and_disposes_what_it_saved()
    {
        var store = new InMemoryArtifactStore();
        var saved = EveryDType();
        var copies = saved.ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        try
        {
            var info = await store.SaveTensorsAndDisposeAsync("vectors/all", saved, new JsonObject { ["kind"] = "test" });
            Assert.Equal(SafeTensors.ArtifactFile, Assert.Single(info.Files).Name);
            Assert.All(saved.Values, t => Assert.True(t.IsInvalid, "a saved tensor was not disposed"));
            var loaded = await store.LoadTensorsAsync("vectors/all");
            try
            {
                AssertSame(copies, loaded);
            }
            finally
            {
                DisposeAll(loaded.Values);
            }
        }
        finally
        {
            DisposeAll(copies.Values);
        }
    }

    [Fact]
    public async Task The_SDK_call_disposes_the_tensors_when_the_save_fails()
    {
        var store = new InMemoryArtifactStore();
        var tensors = new Dictionary<string, Tensor> { ["v"] = ones(3) };
        var error = await Assert.ThrowsAsync<ArgumentException>(() => store.SaveTensorsAndDisposeAsync("Bad Name", tensors));
        Assert.Contains("artifact name", error.Message, StringComparison.Ordinal);
        Assert.True(tensors["v"].IsInvalid, "the tensor was not disposed after a failed save");
        Assert.Empty(store.Names);
    }

    [Fact]
    public void A_file_written_by_the_SDK_loads_in_the_runtime_loader_and_one_written_by_the_runtime_loads_in_the_SDK()
    {
        var tensors = EveryDType();
        string sdkFile = TempFile(), runtimeFile = TempFile();
        try
        {
            using (var stream = File.Create(sdkFile))
                SafeTensors.Write(stream, tensors, new JsonObject { ["source"] = "sdk" });
            using (var file = SafeTensorsFile.Open(sdkFile))
            {
                Assert.Equal("sdk", file.Metadata["source"]);
                var read = file.Entries.Keys.ToDictionary(k => k, k => file.Read(k));
                try
                {
                    AssertSame(tensors, read);
                }
                finally
                {
                    DisposeAll(read.Values);
                }
            }

            SafeTensorsFile.Write(runtimeFile, tensors, new Dictionary<string, string> { ["source"] = "sdk" });
            using (var stream = File.OpenRead(runtimeFile))
            {
                var read = SafeTensors.Read(stream, runtimeFile);
                try
                {
                    AssertSame(tensors, read);
                }
                finally
                {
                    DisposeAll(read.Values);
                }
            }
            // The same tensors and metadata give the same bytes: one codec writes both.
            Assert.Equal(File.ReadAllBytes(sdkFile), File.ReadAllBytes(runtimeFile));
        }
        finally
        {
            DisposeAll(tensors.Values);
            File.Delete(sdkFile);
            File.Delete(runtimeFile);
        }
    }

    [Fact]
    public void Corrupt_and_truncated_files_are_refused_with_the_file_named()
    {
        byte[] good;
        using (var a = ones(4, 4))
            good = SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["w"] = a });

        var truncated = Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Read(good[..^8], "probe/tensors.safetensors"));
        Assert.StartsWith("probe/tensors.safetensors: ", truncated.Message, StringComparison.Ordinal);
        Assert.Contains("outside", truncated.Problem, StringComparison.Ordinal);

        var lying = good.ToArray();
        BinaryPrimitives.WriteUInt64LittleEndian(lying, ulong.MaxValue / 3);
        Assert.Contains("header length", Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Read(lying, "x.safetensors")).Problem, StringComparison.Ordinal);

        var tooShort = Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Read([1, 2, 3], "tiny.safetensors"));
        Assert.Contains("shorter than the 8-byte header length", tooShort.Message, StringComparison.Ordinal);

        byte[] notJson = [.. BitConverter.GetBytes(16UL), .. "{not json at all"u8];
        Assert.Contains("not valid JSON", Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Read(notJson, "x.safetensors")).Problem, StringComparison.Ordinal);

        var header = Encoding.UTF8.GetBytes("""{"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}""");
        byte[] badDType = [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. new byte[8]];
        var unsupported = Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Read(badDType, "x.safetensors"));
        Assert.Contains("tensor 'w': unsupported dtype 'C64'", unsupported.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_corrupt_tensors_artifact_names_the_artifact_and_its_file()
    {
        var store = new InMemoryArtifactStore();
        await store.SaveFilesAsync("vectors/broken", new Dictionary<string, byte[]> { [SafeTensors.ArtifactFile] = [.. BitConverter.GetBytes(1000UL), .. "{}"u8] });
        var error = await Assert.ThrowsAsync<SafeTensorsFormatException>(() => store.LoadTensorsAsync("vectors/broken"));
        Assert.Contains("'vectors/broken'/tensors.safetensors", error.Message, StringComparison.Ordinal);
        Assert.Contains("truncated", error.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void A_dtype_safetensors_cannot_hold_is_refused_with_the_tensor_named()
    {
        using var complex = zeros(2, dtype: ScalarType.ComplexFloat32);
        var error = Assert.Throws<ArgumentException>(() => SafeTensors.ToBytes(new Dictionary<string, Tensor> { ["phases"] = complex }));
        Assert.Contains("tensor 'phases'", error.Message, StringComparison.Ordinal);
        Assert.Contains("cannot store", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Offsets_that_are_not_numbers_are_refused_by_name()
    {
        // JsonElement.TryGetInt64 throws InvalidOperationException on a string; the codec says what is wrong instead.
        var header = Encoding.UTF8.GetBytes("""{"w":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}""");
        byte[] file = [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. new byte[4]];
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Read(file, "x.safetensors"));
        Assert.Equal("x.safetensors: tensor 'w': data_offsets must be [begin, end]", e.Message);
    }

    private static SafeTensorSource Source(string name, long[] shape, int bytes) =>
        new(name, SafeTensorsDType.F32, shape, s => s.Write(new byte[bytes]));

    [Fact]
    public void The_codec_refuses_to_write_what_it_could_not_read_back()
    {
        using var sink = new MemoryStream();
        var reserved = Assert.Throws<ArgumentException>(() => SafeTensorsFormat.Write(sink, [Source("__metadata__", [1], 4)]));
        Assert.Contains("may not be named __metadata__", reserved.Message, StringComparison.Ordinal);

        var twice = Assert.Throws<ArgumentException>(() => SafeTensorsFormat.Write(sink, [Source("w", [1], 4), Source("w", [1], 4)]));
        Assert.Contains("two tensors are named 'w'", twice.Message, StringComparison.Ordinal);

        var negative = Assert.Throws<ArgumentException>(() => SafeTensorsFormat.Write(sink, [Source("w", [2, -1], 0)]));
        Assert.Contains("tensor 'w' has a negative dimension", negative.Message, StringComparison.Ordinal);

        var shortData = Assert.Throws<InvalidOperationException>(() => SafeTensorsFormat.Write(sink, [Source("w", [2, 3], 20)]));
        Assert.Equal("tensor 'w' wrote 20 bytes; its shape and dtype need 24", shortData.Message);
    }

    [Fact]
    public void An_atomic_file_write_that_fails_leaves_neither_the_file_nor_its_temporary()
    {
        string path = TempFile();
        var e = Assert.Throws<InvalidOperationException>(() => SafeTensorsFormat.WriteFile(path, [Source("w", [4], 3)]));
        Assert.Contains("wrote 3 bytes", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(path));
        Assert.False(File.Exists(path + ".tmp-" + Environment.ProcessId));
    }

    [Theory]
    [InlineData(SafeTensorsDType.F64, ScalarType.Float64)]
    [InlineData(SafeTensorsDType.F32, ScalarType.Float32)]
    [InlineData(SafeTensorsDType.F16, ScalarType.Float16)]
    [InlineData(SafeTensorsDType.BF16, ScalarType.BFloat16)]
    [InlineData(SafeTensorsDType.I64, ScalarType.Int64)]
    [InlineData(SafeTensorsDType.I32, ScalarType.Int32)]
    [InlineData(SafeTensorsDType.I16, ScalarType.Int16)]
    [InlineData(SafeTensorsDType.I8, ScalarType.Int8)]
    [InlineData(SafeTensorsDType.U8, ScalarType.Byte)]
    [InlineData(SafeTensorsDType.BOOL, ScalarType.Bool)]
    public void The_codecs_dtype_numbers_are_torchs(SafeTensorsDType dtype, ScalarType torchType)
    {
        Assert.Equal(torchType, dtype.ToScalarType());
        Assert.Equal(dtype, torchType.ToSafeTensorsDType());
    }
}
