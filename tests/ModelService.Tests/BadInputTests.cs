using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;

namespace InterpMesh.ModelService.Tests;

/// <summary>Every bad request gets the right status and a message saying what to fix, and the server keeps serving.</summary>
public sealed class BadInputTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    private static Input Ids(params int[] ids)
    {
        var t = new TokenIds();
        t.Ids.AddRange(ids);
        return new Input { Tokens = t };
    }

    private static Tensor Floats(long[] shape, params float[] values)
    {
        var t = new Tensor { Dtype = DType.Float32, Data = ByteString.CopyFrom(values.SelectMany(BitConverter.GetBytes).ToArray()) };
        t.Shape.AddRange(shape);
        return t;
    }

    private static RunRequest Valid()
    {
        var r = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        r.Inputs.Add(Ids(1, 403, 407));
        return r;
    }

    private async Task Drain(RunRequest request)
    {
        using var call = server.Client.Run(request);
        await foreach (var _ in call.ResponseStream.ReadAllAsync())
        {
        }
    }

    private async Task Fails(RunRequest request, StatusCode code, params string[] message)
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Drain(request));
        Assert.Equal(code, e.StatusCode);
        foreach (var part in message)
            Assert.Contains(part, e.Status.Detail);
        await Drain(Valid()); // the server still serves
    }

    private static RunRequest With(Action<RunRequest> change)
    {
        var r = Valid();
        change(r);
        return r;
    }

    [Fact]
    public Task Unknown_hook_lists_the_closest_valid_names() =>
        Fails(With(r => r.Captures.Add(new Capture { Hooks = { "blocks.0.hook_resid_pots" } })), StatusCode.InvalidArgument,
            "unknown hook 'blocks.0.hook_resid_pots'", "'blocks.0.hook_resid_post'");

    [Fact]
    public Task Token_id_out_of_range() =>
        Fails(With(r => r.Inputs.Add(Ids(1, 9999))), StatusCode.InvalidArgument, "inputs[1] has token id 9999", "0..511");

    [Fact]
    public Task Empty_batch() =>
        Fails(new RunRequest(), StatusCode.InvalidArgument, "inputs is empty");

    [Fact]
    public Task Empty_input() =>
        Fails(With(r => r.Inputs.Add(new Input())), StatusCode.InvalidArgument, "inputs[1] is empty");

    [Fact]
    public Task Sequence_longer_than_the_context() =>
        Fails(With(r => r.Inputs.Add(Ids(Enumerable.Repeat(5, 513).ToArray()))), StatusCode.InvalidArgument, "513 tokens", "context length of 512");

    [Fact]
    public Task Intervention_tensor_of_wrong_shape() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.Add, Value = Floats([3], 1, 2, 3) })),
            StatusCode.InvalidArgument, "does not broadcast", "[batch, pos, d_model]");

    [Fact]
    public Task Intervention_tensor_whose_bytes_do_not_match_its_shape() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.Add, Value = Floats([64], 1, 2) })),
            StatusCode.InvalidArgument, "interventions[0].value", "needs 256 bytes");

    [Fact]
    public Task Intervention_tensor_with_nan() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.Add, Value = Floats([1], float.NaN) })),
            StatusCode.InvalidArgument, "NaN or infinite");

    [Fact]
    public Task Intervention_without_an_op() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post" })), StatusCode.InvalidArgument, "has no op");

    [Fact]
    public Task Head_index_out_of_range() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.attn.hook_z", Op = InterventionOp.ZeroAblate, Heads = { 8 } })),
            StatusCode.InvalidArgument, "head 8 is out of range", "8 heads");

    [Fact]
    public Task Capture_over_the_byte_budget() =>
        Fails(With(r =>
        {
            r.Inputs.Clear();
            r.Inputs.Add(Ids(Enumerable.Repeat(5, 500).ToArray()));
            r.Captures.Add(new Capture { Hooks = { "blocks.*.attn.hook_pattern" } });
        }), StatusCode.ResourceExhausted, "per-request budget", "bfloat16");

    [Fact]
    public Task Batch_over_the_limit() =>
        Fails(With(r => r.Inputs.AddRange(Enumerable.Range(0, 20).Select(_ => Ids(1, 2)))), StatusCode.ResourceExhausted, "batch limit of 16");

    [Fact]
    public async Task Generate_with_bad_parameters()
    {
        var request = new GenerateRequest { MaxNewTokens = 0 };
        request.Prompts.Add(Ids(1));
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = server.Client.Generate(request);
            await foreach (var _ in call.ResponseStream.ReadAllAsync())
            {
            }
        });
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("max_new_tokens must be at least 1", e.Status.Detail);
        await Drain(Valid());
    }

    [Fact]
    public async Task Detokenize_out_of_range_id()
    {
        var request = new DetokenizeRequest();
        request.Tokens.Add(new TokenIds { Ids = { 1, 600 } });
        var e = await Assert.ThrowsAsync<RpcException>(async () => await server.Client.DetokenizeAsync(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("token id 600 is outside the vocabulary", e.Status.Detail);
    }

    [Fact]
    public async Task Cancelled_request_stops_and_the_server_keeps_serving()
    {
        using var cts = new CancellationTokenSource();
        var request = Valid();
        request.Inputs.Clear();
        request.Inputs.Add(Ids(Enumerable.Repeat(5, 400).ToArray()));
        request.Captures.Add(new Capture { Hooks = { "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern" }, Dtype = DType.Bfloat16 });
        using var call = server.Client.Run(request, cancellationToken: cts.Token);
        Assert.True(await call.ResponseStream.MoveNext());
        cts.Cancel();
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await call.ResponseStream.MoveNext())
            {
            }
        });
        Assert.Equal(StatusCode.Cancelled, e.StatusCode);
        await Drain(Valid());
    }
}
