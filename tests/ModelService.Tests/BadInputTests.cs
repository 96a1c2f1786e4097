using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.ModelService.Wire;

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
        // A per-request limit holds whenever the request is sent: clients are told not to retry it; other errors carry no pushback.
        Assert.Equal(code == StatusCode.ResourceExhausted ? "-1" : null, e.Trailers.GetValue(Contracts.RetryPushback.Trailer));
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

    private async Task GenerateFails(Action<GenerateRequest> change, StatusCode code, params string[] message)
    {
        var request = new GenerateRequest { MaxNewTokens = 4 };
        request.Prompts.Add(Ids(1, 403, 407));
        change(request);
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = server.Client.Generate(request);
            await foreach (var _ in call.ResponseStream.ReadAllAsync())
            {
            }
        });
        Assert.Equal(code, e.StatusCode);
        foreach (var m in message)
            Assert.Contains(m, e.Status.Detail);
        Assert.True(e.Status.Detail.Length < 600, "the message is short enough for any client's metadata limit");
        Assert.DoesNotContain("/work", e.Status.Detail);
        Assert.DoesNotContain("   at ", e.Status.Detail);
        await Drain(Valid());
    }

    [Fact]
    public Task Run_intervention_position_outside_every_row() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.ZeroAblate, Positions = { 3 } })),
            StatusCode.InvalidArgument, "interventions[0]: position 3 is outside every row's sequence", "padded length is 3");

    [Fact]
    public Task Run_intervention_row_outside_the_batch() =>
        Fails(With(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.ZeroAblate, Rows = { 1 } })),
            StatusCode.InvalidArgument, "interventions[0]: row 1 is outside the request's batch of 1 rows");

    [Fact]
    public async Task Generate_intervention_positions_may_target_the_future_but_not_beyond_the_generation()
    {
        // Prompt of 3 + 4 new tokens: position 6 is the last one generation computes.
        var request = new GenerateRequest { MaxNewTokens = 4, NoDefaultStop = true };
        request.Prompts.Add(Ids(1, 403, 407));
        request.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.ZeroAblate, Positions = { 6 } });
        using (var call = server.Client.Generate(request))
        {
            int steps = 0;
            await foreach (var m in call.ResponseStream.ReadAllAsync())
                steps += m.TokenIds.Count > 0 ? 1 : 0;
            Assert.Equal(4, steps);
        }
        await GenerateFails(r => r.Interventions.Add(new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.ZeroAblate, Positions = { 7 } }),
            StatusCode.InvalidArgument, "position 7 is beyond the generation", "7 in all");
    }

    [Fact]
    public Task Max_new_tokens_near_two_to_the_31() =>
        GenerateFails(r => r.MaxNewTokens = int.MaxValue - 1, StatusCode.InvalidArgument, "max_new_tokens (2147483646) exceed the model's context length of 512");

    [Theory]
    [InlineData(double.NaN)]
    [InlineData(-0.5)]
    [InlineData(1.5)]
    public Task Top_p_not_in_range(double topP) =>
        GenerateFails(r => r.Sampling = new SamplingParameters { Temperature = 1, TopP = topP }, StatusCode.InvalidArgument, "sampling.top_p must be in (0, 1]");

    [Fact]
    public Task Temperature_not_finite() =>
        GenerateFails(r => r.Sampling = new SamplingParameters { Temperature = double.PositiveInfinity }, StatusCode.InvalidArgument, "sampling.temperature");

    [Theory]
    [InlineData(512)]
    [InlineData(-1)]
    public Task Stop_ids_outside_the_vocabulary(int id) =>
        GenerateFails(r => r.StopTokenIds.Add(id), StatusCode.InvalidArgument, $"stop_token_ids[0] = {id} is outside the vocabulary (0..511)");

    [Fact]
    public Task A_shape_whose_byte_count_overflows_names_the_field() =>
        Fails(With(r => r.Interventions.Add(new Intervention
        {
            Hook = "blocks.0.hook_resid_post",
            Op = InterventionOp.Add,
            Value = new Tensor { Dtype = DType.Float32, Shape = { 1L << 31, 1L << 31, 4 }, Data = ByteString.CopyFrom(new byte[16]) },
        })), StatusCode.InvalidArgument, "interventions[0].value: shape", "more bytes than a message can carry");

    [Fact]
    public async Task A_very_long_unknown_hook_name_is_quoted_short()
    {
        string name = "blocks.0." + new string('x', 20_000);
        await Fails(With(r => r.Captures.Add(new Capture { Hooks = { name } })), StatusCode.InvalidArgument, "unknown hook 'blocks.0.xxx", "(20009 characters)");
        await Fails(With(r => r.Interventions.Add(new Intervention { Hook = name, Op = InterventionOp.ZeroAblate })), StatusCode.InvalidArgument, "unknown hook", "(20009 characters)");
        await GenerateFails(r => r.Captures.Add(new Capture { Hooks = { name + "*" } }), StatusCode.InvalidArgument, "matches no hook", "(20010 characters)");
    }

    [Fact]
    public async Task Messages_of_bad_requests_are_short_and_carry_no_server_detail()
    {
        string name = new('y', 50_000);
        var request = With(r => r.Captures.Add(new Capture { Hooks = { name } }));
        var e = await Assert.ThrowsAsync<RpcException>(() => Drain(request));
        Assert.True(e.Status.Detail.Length < 600, $"a {e.Status.Detail.Length}-character message");
    }

    [Fact]
    public void Only_request_errors_are_invalid_argument_and_anything_else_is_a_short_internal_error()
    {
        Assert.Equal(StatusCode.InvalidArgument, RpcErrors.ToRpc(new InterpMesh.Runtime.InvalidRequestException("bad hook")).StatusCode);
        Assert.Equal(StatusCode.ResourceExhausted, RpcErrors.ToRpc(new InterpMesh.Runtime.RequestLimitException("too big")).StatusCode);
        Assert.Equal(StatusCode.Unavailable, RpcErrors.ToRpc(new InterpMesh.Engine.EngineStoppedException()).StatusCode);
        foreach (var bug in new Exception[]
        {
            new InvalidOperationException("Sequence contains no elements"),
            new ArgumentException("Nullable object must have a value"),
            new System.Runtime.InteropServices.ExternalException("libtorch: /opt/build/aten/src/ATen/native.cpp:42 at::native stack"),
        })
        {
            var rpc = RpcErrors.ToRpc(bug);
            Assert.Equal(StatusCode.Internal, rpc.StatusCode);
            Assert.DoesNotContain(bug.Message, rpc.Status.Detail);
            Assert.DoesNotContain("/", rpc.Status.Detail);
            Assert.Contains("internal error", rpc.Status.Detail);
        }
    }
}
