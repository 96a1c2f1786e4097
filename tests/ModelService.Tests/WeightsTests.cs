using Grpc.Core;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Tests;

/// <summary>GetWeights on a real loopback server: chunked under the chunk size, reassembled with the captures' assembler, equal to the loaded weights.</summary>
public sealed class WeightsTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    private async Task<List<AssembledActivation>> Get(GetWeightsRequest request)
    {
        var assembler = new ChunkAssembler();
        var weights = new List<AssembledActivation>();
        using var call = server.Client.GetWeights(request);
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            Assert.True(m.Chunk.Data.Length <= ServerFixture.ChunkBytes);
            if (assembler.Add(m.Chunk) is { } done)
                weights.Add(done);
        }
        Assert.False(assembler.InProgress);
        return weights;
    }

    [Fact]
    public async Task Weights_arrive_in_model_order_equal_to_the_loaded_ones()
    {
        var request = new GetWeightsRequest();
        request.Names.AddRange(["blocks.*.attn.W_Q", "embed.W_E", "blocks.0.attn.W_Q"]);
        var weights = await Get(request);
        var m = server.Local.Transformer;
        var c = m.Config;
        Assert.Equal(["embed.W_E", .. Enumerable.Range(0, c.NLayers).Select(l => $"blocks.{l}.attn.W_Q")], weights.Select(w => w.Hook));
        Assert.Equal([c.VocabSize, c.DModel], weights[0].Tensor.Shape);
        Assert.Equal([c.NHeads, c.DModel, c.DHead], weights[1].Tensor.Shape);
        using var scope = NewDisposeScope();
        foreach (var w in weights)
        {
            var expected = m.Parameters.All.Single(e => e.Name == w.Hook).Open().to(ScalarType.Float32).contiguous().data<float>().ToArray();
            Assert.Equal(DType.Float32, w.Tensor.DType);
            Assert.Equal(expected, w.Tensor.ToFloat32());
        }
    }

    [Fact]
    public async Task Bfloat16_halves_the_bytes()
    {
        var request = new GetWeightsRequest { Dtype = DType.Bfloat16 };
        request.Names.Add("blocks.0.mlp.W_out");
        var weights = await Get(request);
        var c = server.Local.Transformer.Config;
        Assert.Equal(DType.Bfloat16, weights.Single().Tensor.DType);
        Assert.Equal(2L * c.DMlp * c.DModel, weights.Single().Tensor.Data.Length);
    }

    [Theory]
    [InlineData("", "name the weights")]
    [InlineData("blocks.0.attn.W_X", "unknown weight")]
    [InlineData("blocks.*.attn.nothing", "matches no weight")]
    [InlineData("long", "longer than")]
    public async Task Bad_names_are_invalid_arguments_and_the_server_keeps_serving(string name, string message)
    {
        var request = new GetWeightsRequest();
        if (name == "long")
            request.Names.Add(new string('w', 100_000));
        else if (name.Length > 0)
            request.Names.Add(name);
        var e = await Assert.ThrowsAsync<RpcException>(() => Get(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains(message, e.Status.Detail);
        Assert.True(e.Status.Detail.Length < 600, e.Status.Detail);
        var good = new GetWeightsRequest();
        good.Names.Add("ln_final.w");
        Assert.Single(await Get(good));
    }

    [Fact]
    public async Task An_integer_dtype_is_refused()
    {
        var request = new GetWeightsRequest { Dtype = DType.Int64 };
        request.Names.Add("embed.W_E");
        var e = await Assert.ThrowsAsync<RpcException>(() => Get(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("FLOAT32", e.Status.Detail);
    }
}
