using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.ModelService.Wire;
using InterpMesh.Plugins;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Tests;

/// <summary>
/// The in-process <see cref="IModelClient"/> against the gRPC path: the same plugin-style requests
/// (captures, an intervention, logits, loss; a Generate with per-step captures) give the same
/// activations, results and messages.
/// </summary>
public sealed class InProcessModelClientTests(ServerFixture server) : IClassFixture<ServerFixture>, IDisposable
{
    private readonly ModelEngine engine = new(server.Local, new EngineOptions
    {
        MaxBatch = 16,
        MaxConcurrentRequests = 8,
        MaxCaptureBytes = ServerFixture.CaptureBudget,
        // The service caps its output buffer at the capture budget.
        OutputBufferBytes = ServerFixture.CaptureBudget,
    });

    private InProcessModelClient Client => new(engine, "stories", ServerFixture.ChunkBytes);

    public void Dispose() => engine.Dispose();

    private static Input Ids(params int[] ids) => new() { Tokens = new TokenIds { Ids = { ids } } };

    private static RunRequest PluginStyleRun()
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last }, Loss = true };
        request.Inputs.Add(Ids(1, 403, 407, 261, 378));
        request.Inputs.Add(Ids(1, 20, 300));
        request.Captures.Add(new Capture { Hooks = { "blocks.*.hook_resid_post" } });
        request.Captures.Add(new Capture { Hooks = { "blocks.2.attn.hook_pattern" }, Reduction = Reduction.Mean });
        request.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.1.mlp.hook_post", Op = InterventionOp.ZeroAblate });
        return request;
    }

    /// <summary>What a plugin gets from the gRPC path: captures reassembled from their chunks, then the result.</summary>
    private async Task<(Dictionary<string, (long[] Shape, byte[] Data)> Captures, RunResult Result)> ViaGrpc(RunRequest request)
    {
        var parts = new Dictionary<string, (long[] Shape, MemoryStream Data)>();
        RunResult? result = null;
        using var call = server.Client.Run(request);
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            if (m.Activation is { } a)
            {
                if (!parts.TryGetValue(a.Hook, out var p))
                    parts[a.Hook] = p = (a.Shape.ToArray(), new MemoryStream());
                a.Data.WriteTo(p.Data);
            }
            else
            {
                result = m.Result;
            }
        }
        return (parts.ToDictionary(kv => kv.Key, kv => (kv.Value.Shape, kv.Value.Data.ToArray())), result!);
    }

    [Fact]
    public async Task Model_info_equals_the_services()
    {
        var viaGrpc = await server.Client.GetModelInfoAsync(new GetModelInfoRequest());
        var inProcess = await Client.GetInfoAsync();
        Assert.Equal(viaGrpc, inProcess);
        Assert.NotEmpty(inProcess.Hooks);
    }

    [Fact]
    public async Task A_plugin_style_run_gives_the_grpc_paths_captures_and_result()
    {
        var (expectedCaptures, expected) = await ViaGrpc(PluginStyleRun());

        var captures = new Dictionary<string, (long[] Shape, byte[] Data)>();
        RunResult? result = null;
        await foreach (var output in Client.RunAsync(PluginStyleRun()))
        {
            if (output.Result is { } r)
            {
                Assert.Null(result);
                result = r;
                continue;
            }
            using var t = output.Activation!;
            Assert.Equal(ScalarType.Float32, t.dtype);
            var bytes = new byte[t.numel() * t.ElementSize];
            t.bytes.CopyTo(bytes);
            captures.Add(output.Hook!, (t.shape, bytes));
        }

        Assert.NotNull(result);
        Assert.Equal(6, captures.Count); // the 5 blocks' resid_post and the reduced pattern
        Assert.Equal(expectedCaptures.Keys.Order(), captures.Keys.Order());
        foreach (var (hook, (shape, data)) in expectedCaptures)
        {
            Assert.Equal(shape, captures[hook].Shape);
            Assert.True(data.AsSpan().SequenceEqual(captures[hook].Data), $"{hook} differs from the gRPC path");
        }
        Assert.Equal(2, captures["blocks.2.attn.hook_pattern"].Shape[0]);
        // Tokens, mask, last-position logits, loss and the receipt: the same message.
        Assert.Equal(expected, result);
        Assert.True(result!.Loss > 0);
        var receipt = Assert.Single(result.Receipts);
        Assert.Equal(["blocks.1.mlp.hook_post"], receipt.MatchedHooks);
        Assert.True(receipt.ElementsChanged > 0);
    }

    [Fact]
    public async Task A_generate_sends_the_grpc_paths_messages()
    {
        var request = new GenerateRequest { MaxNewTokens = 6, NoDefaultStop = true };
        request.Prompts.Add(Ids(1, 403, 407));
        request.Prompts.Add(Ids(1, 20));
        request.Captures.Add(new Capture { Hooks = { "blocks.0.hook_resid_post", "blocks.4.attn.hook_pattern" }, Positions = new Contracts.V1.PositionSelection { Last = true } });

        var expected = new List<GenerateResponse>();
        using (var call = server.Client.Generate(request))
        {
            await foreach (var m in call.ResponseStream.ReadAllAsync())
                expected.Add(m);
        }
        var messages = new List<GenerateResponse>();
        await foreach (var m in Client.GenerateAsync(request))
            messages.Add(m);

        Assert.Equal(expected, messages);
        Assert.Equal(6, messages.Count(m => m.TokenIds.Count > 0));
        Assert.True(messages.Last().Final);
        Assert.Contains(messages, m => m.Activation?.Hook == "blocks.4.attn.hook_pattern");
    }

    [Fact]
    public async Task Generate_steps_arrive_assembled_as_the_grpc_chunks_put_together()
    {
        var request = new GenerateRequest { MaxNewTokens = 4, NoDefaultStop = true };
        request.Prompts.Add(Ids(1, 403, 407));
        request.Captures.Add(new Capture { Hooks = { "blocks.0.hook_resid_post", "blocks.4.attn.hook_pattern" }, Positions = new Contracts.V1.PositionSelection { Last = true } });

        // Second path: the raw gRPC messages, chunk bytes concatenated by hand.
        var expected = new List<(int Step, string? Hook, long[]? Shape, byte[]? Bytes, GenerateResponse? Tokens)>();
        using (var call = server.Client.Generate(request))
        {
            var pending = new MemoryStream();
            await foreach (var m in call.ResponseStream.ReadAllAsync())
            {
                if (m.Activation is { } a)
                {
                    a.Data.WriteTo(pending);
                    if (pending.Length == a.TotalBytes)
                    {
                        expected.Add((m.Step, a.Hook, [.. a.Shape], pending.ToArray(), null));
                        pending = new MemoryStream();
                    }
                }
                else
                {
                    expected.Add((m.Step, null, null, null, m));
                }
            }
        }

        var actual = new List<GenerateOutput>();
        await foreach (var o in ((IModelClient)Client).GenerateStepsAsync(request))
            actual.Add(o);
        try
        {
            Assert.Equal(expected.Count, actual.Count);
            Assert.Equal(8, actual.Count(o => o.Activation is not null));
            for (int i = 0; i < expected.Count; i++)
            {
                var (e, a) = (expected[i], actual[i]);
                Assert.Equal(e.Step, a.Step);
                Assert.Equal(e.Hook, a.Hook);
                if (e.Hook is null)
                {
                    Assert.Equal(e.Tokens, a.Tokens);
                    Assert.Null(a.Layer);
                    continue;
                }
                Assert.Equal(e.Hook == "blocks.0.hook_resid_post" ? 0 : 4, a.Layer);
                Assert.Equal(e.Shape, a.Activation!.shape);
                Assert.Equal(e.Bytes, a.Activation.bytes.ToArray());
            }
        }
        finally
        {
            foreach (var o in actual)
                o.Activation?.Dispose();
        }
    }

    [Fact]
    public async Task Bad_requests_fail_as_they_do_over_grpc()
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        request.Inputs.Add(Ids(1, 2));
        request.Captures.Add(new Capture { Hooks = { "blocks.*.hook_nothing" } });

        var viaGrpc = await Assert.ThrowsAsync<RpcException>(() => ViaGrpc(request));
        var inProcess = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            await foreach (var output in Client.RunAsync(request))
                output.Activation?.Dispose();
        });
        Assert.Equal(StatusCode.InvalidArgument, inProcess.StatusCode);
        Assert.Equal(viaGrpc.StatusCode, inProcess.StatusCode);
        Assert.Equal(viaGrpc.Status.Detail, inProcess.Status.Detail);

        var detokenize = await Assert.ThrowsAsync<RpcException>(() => Client.DetokenizeAsync([[1, 9999]]));
        Assert.Equal(StatusCode.InvalidArgument, detokenize.StatusCode);
    }

    [Fact]
    public async Task Tokenize_and_detokenize_round_trip_like_the_service()
    {
        var viaGrpc = await server.Client.TokenizeAsync(new TokenizeRequest { Texts = { "Once upon a time" } });
        var ids = await Client.TokenizeAsync(["Once upon a time"]);
        Assert.Equal(viaGrpc.Tokens[0].Ids, ids[0]);
        var texts = await Client.DetokenizeAsync(ids);
        var expected = await server.Client.DetokenizeAsync(new DetokenizeRequest { Tokens = { viaGrpc.Tokens } });
        Assert.Equal(expected.Texts, texts);
    }
}
