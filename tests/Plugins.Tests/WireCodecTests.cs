using System.Runtime.InteropServices;
using Google.Protobuf;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using InterpMesh.Tests;
using static TorchSharp.torch;

namespace InterpMesh.Plugins.Tests;

/// <summary>The one wire codec (<see cref="WireTensor"/>), its chunk assembler and the SDK's torch adapters.</summary>
public sealed class WireCodecTests : TorchTest
{
    private static byte[] Bytes(params ushort[] halves) => MemoryMarshal.AsBytes(halves.AsSpan()).ToArray();

    [Fact]
    public void Float32_round_trips_through_the_proto_without_changing_a_bit()
    {
        float[] values = [1.5f, -0f, float.Epsilon, 3.25e7f, -1e-30f, 42f];
        var proto = WireTensor.FromFloat32(values, 2, 3).ToProto();
        Assert.Equal([2L, 3L], proto.Shape);
        var back = WireTensor.FromProto(proto, "x");
        Assert.Equal(DType.Float32, back.DType);
        Assert.Equal(6, back.ElementCount);
        Assert.Equal(values.Select(BitConverter.SingleToInt32Bits), back.ToFloat32().Select(BitConverter.SingleToInt32Bits));
        Assert.Equal([[1.5f, -0f, float.Epsilon], [3.25e7f, -1e-30f, 42f]], back.ToFloat32Rows());
    }

    [Fact]
    public void Bfloat16_and_float16_widen_exactly()
    {
        // bfloat16: the top 16 bits of a float32. 0x3F80 = 1, 0xC020 = -2.5, 0x4049 = 3.140625.
        var bf16 = WireTensor.Create(DType.Bfloat16, [3], Bytes(0x3F80, 0xC020, 0x4049), "x");
        Assert.Equal([1f, -2.5f, 3.140625f], bf16.ToFloat32());
        // IEEE half: 0x3C00 = 1, 0xC100 = -2.5, 0x7BFF = 65504 (the largest finite half).
        var f16 = WireTensor.Create(DType.Float16, [3], Bytes(0x3C00, 0xC100, 0x7BFF), "x");
        Assert.Equal([1f, -2.5f, 65504f], f16.ToFloat32());
    }

    [Fact]
    public void Int64_reads_as_integers_and_refuses_float_reads()
    {
        var ids = WireTensor.FromInt64([5, -1, long.MaxValue], 1, 3);
        Assert.Equal([5L, -1L, long.MaxValue], ids.ToInt64());
        Assert.Contains("ToInt64", Assert.Throws<InvalidOperationException>(() => ids.ToFloat32()).Message);
        Assert.Contains("ToFloat32", Assert.Throws<InvalidOperationException>(() => WireTensor.FromFloat32([1f]).ToInt64()).Message);
    }

    [Theory]
    [InlineData(DType.Unspecified, new long[] { 2 }, 8, "x: dtype must be FLOAT32, BFLOAT16, FLOAT16 or INT64, got Unspecified")]
    [InlineData(DType.Float32, new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, 4, "x: shape has 9 dimensions; at most 8 are accepted")]
    [InlineData(DType.Float32, new long[] { 2, -3 }, 0, "x: shape [2, -3] has a negative dimension")]
    [InlineData(DType.Float32, new long[] { 65536, 65536 }, 0, "x: shape [65536, 65536] holds more bytes than a message can carry; send a smaller tensor")]
    [InlineData(DType.Bfloat16, new long[] { 2, 3 }, 10, "x: shape [2, 3] of Bfloat16 needs 12 bytes, got 10")]
    public void A_bad_tensor_is_refused_with_what_to_fix(DType dtype, long[] shape, int bytes, string message)
    {
        Assert.False(WireTensor.TryCreate(dtype, shape, new byte[bytes], "x", out var tensor, out var error));
        Assert.Null(tensor);
        Assert.Equal(message, error);
        Assert.Equal(message, Assert.Throws<InvalidDataException>(() => WireTensor.Create(dtype, shape, new byte[bytes], "x")).Message);
        var proto = new Contracts.V1.Tensor { Dtype = dtype, Data = ByteString.CopyFrom(new byte[bytes]) };
        proto.Shape.AddRange(shape);
        Assert.Equal(message, Assert.Throws<InvalidDataException>(() => WireTensor.FromProto(proto, "x")).Message);
    }

    private static List<ActivationChunk> Split(string hook, WireTensor t, int chunkBytes)
    {
        var chunks = new List<ActivationChunk>();
        for (int offset = 0; offset == 0 || offset < t.Data.Length; offset += chunkBytes)
        {
            var c = new ActivationChunk
            {
                Hook = hook, Dtype = t.DType, Offset = offset, TotalBytes = t.Data.Length,
                Data = ByteString.CopyFrom(t.Data.Span.Slice(offset, Math.Min(chunkBytes, t.Data.Length - offset))),
            };
            c.Shape.AddRange(t.Shape);
            chunks.Add(c);
            if (t.Data.Length == 0)
                break;
        }
        return chunks;
    }

    [Fact]
    public void Chunks_of_consecutive_captures_reassemble_into_each_capture()
    {
        var a = WireTensor.FromFloat32([.. Enumerable.Range(0, 30).Select(i => i * 0.5f)], 1, 5, 6);
        var b = WireTensor.FromInt64([7, 8, 9], 3);
        var empty = WireTensor.FromFloat32([], 0, 4);
        var assembler = new ChunkAssembler();
        var done = new List<AssembledActivation>();
        foreach (var chunk in Split("blocks.0.hook_resid_post", a, 7).Concat(Split("blocks.1.attn.hook_pattern", b, 5)).Concat(Split("blocks.2.hook_z", empty, 4)))
        {
            if (assembler.Add(chunk) is { } capture)
                done.Add(capture);
        }
        Assert.False(assembler.InProgress);
        Assert.Equal(["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.2.hook_z"], done.Select(d => d.Hook));
        Assert.Equal([1L, 5L, 6L], done[0].Tensor.Shape);
        Assert.Equal(a.ToFloat32(), done[0].Tensor.ToFloat32());
        Assert.Equal([7L, 8L, 9L], done[1].Tensor.ToInt64());
        Assert.Equal(0, done[2].Tensor.ElementCount);
    }

    [Fact]
    public void A_chunk_out_of_place_names_the_hooks_involved()
    {
        var t = WireTensor.FromFloat32([1f, 2f, 3f, 4f]);
        var chunks = Split("blocks.0.hook_q", t, 4);

        var skipped = new ChunkAssembler();
        skipped.Add(chunks[0]);
        var e = Assert.Throws<InvalidDataException>(() => skipped.Add(chunks[2]));
        Assert.Equal("a chunk of 'blocks.0.hook_q' at byte 8 arrived while 'blocks.0.hook_q' had 4 of 16 bytes", e.Message);

        var interleaved = new ChunkAssembler();
        interleaved.Add(chunks[0]);
        var other = Split("blocks.1.hook_k", t, 4)[0];
        Assert.Contains("'blocks.1.hook_k' at byte 0 arrived while 'blocks.0.hook_q' had 4 of 16 bytes", Assert.Throws<InvalidDataException>(() => interleaved.Add(other)).Message);

        Assert.Equal("the first chunk of 'blocks.0.hook_q' starts at byte 4, not 0", Assert.Throws<InvalidDataException>(() => new ChunkAssembler().Add(chunks[1])).Message);
    }

    [Fact]
    public void A_capture_and_a_gradient_of_one_hook_are_assembled_apart()
    {
        var activation = WireTensor.FromFloat32([1f, 2f, 3f, 4f]);
        var gradient = WireTensor.FromFloat32([-1f, -2f, -3f, -4f]);
        var captureChunks = Split("blocks.0.hook_resid_post", activation, 8);
        var gradientChunks = Split("blocks.0.hook_resid_post", gradient, 8);
        foreach (var c in gradientChunks)
            c.Gradient = true;

        var assembler = new ChunkAssembler();
        var done = captureChunks.Concat(gradientChunks).Select(assembler.Add).Where(a => a is not null).ToList();
        Assert.Equal([false, true], done.Select(d => d!.Gradient));
        Assert.Equal(activation.ToFloat32(), done[0]!.Tensor.ToFloat32());
        Assert.Equal(gradient.ToFloat32(), done[1]!.Tensor.ToFloat32());

        // The gradient's first chunk cannot continue the capture of the same hook in progress.
        var interleaved = new ChunkAssembler();
        interleaved.Add(captureChunks[0]);
        var second = gradientChunks[1].Clone();
        second.Offset = 8;
        Assert.Equal("a chunk of the gradient of 'blocks.0.hook_resid_post' at byte 8 arrived while 'blocks.0.hook_resid_post' had 8 of 16 bytes",
            Assert.Throws<InvalidDataException>(() => interleaved.Add(second)).Message);
    }

    [Fact]
    public void A_capture_whose_bytes_do_not_fit_its_shape_is_refused()
    {
        var chunk = new ActivationChunk { Hook = "blocks.0.hook_v", Dtype = DType.Float32, Offset = 0, TotalBytes = 12, Data = ByteString.CopyFrom(new byte[12]) };
        chunk.Shape.AddRange([2, 2]);
        Assert.Equal("capture 'blocks.0.hook_v': shape [2, 2] of Float32 needs 16 bytes, got 12", Assert.Throws<InvalidDataException>(() => new ChunkAssembler().Add(chunk)).Message);

        var overflowing = new ActivationChunk { Hook = "blocks.0.hook_v", Dtype = DType.Float32, Offset = 0, TotalBytes = 4, Data = ByteString.CopyFrom(new byte[8]) };
        Assert.Equal("chunks of 'blocks.0.hook_v' carry more than its 4 bytes", Assert.Throws<InvalidDataException>(() => new ChunkAssembler().Add(overflowing)).Message);
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.Int64)]
    public void Torch_tensors_round_trip_through_the_codec(ScalarType dtype)
    {
        using var g = new Generator(3);
        var original = (randn([2, 3, 4], generator: g) * 100).to(dtype);
        // A strided view: the adapter copies it out contiguous.
        var view = original.transpose(1, 2);
        var wire = view.ToWireTensor();
        Assert.Equal([2L, 4L, 3L], wire.Shape);
        Assert.Equal(dtype.ToWireDType(), wire.DType);
        var back = WireTensor.FromProto(wire.ToProto(), "x").ToTorch();
        Assert.Equal(dtype, back.dtype);
        Assert.Equal(view.contiguous().bytes.ToArray(), back.bytes.ToArray());
        if (dtype != ScalarType.Int64)
        {
            // A second path for the widening: torch's own conversion to float32.
            Assert.Equal(view.to(ScalarType.Float32).contiguous().data<float>().ToArray(), wire.ToFloat32());
        }
    }
}
