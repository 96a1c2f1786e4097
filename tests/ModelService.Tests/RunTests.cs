using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using TorchSharp;
using static TorchSharp.torch;
using HookPlan = InterpMesh.Runtime.Hooks.HookPlan;

namespace InterpMesh.ModelService.Tests;

/// <summary>The gRPC contract against the in-process runtime, on a real loopback server.</summary>
public sealed class RunTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    private static readonly int[] PromptA = [1, 403, 407, 261, 378];
    private static readonly int[] PromptB = [1, 20, 300];

    private static Input Ids(params int[] ids)
    {
        var t = new TokenIds();
        t.Ids.AddRange(ids);
        return new Input { Tokens = t };
    }

    private static async Task<(Dictionary<string, (long[] Shape, byte[] Data)> Captures, RunResult Result, List<RunResponse> Messages)> Call(Contracts.V1.ModelService.ModelServiceClient client, RunRequest request)
    {
        var parts = new Dictionary<string, (long[] Shape, MemoryStream Data)>();
        var messages = new List<RunResponse>();
        RunResult? result = null;
        using var call = client.Run(request);
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            messages.Add(m);
            if (m.Activation is { } a)
            {
                if (!parts.TryGetValue(a.Hook, out var p))
                    parts[a.Hook] = p = (a.Shape.ToArray(), new MemoryStream());
                Assert.Equal(p.Data.Length, a.Offset);
                a.Data.WriteTo(p.Data);
            }
            else
            {
                result = m.Result;
            }
        }
        return (parts.ToDictionary(kv => kv.Key, kv => (kv.Value.Shape, kv.Value.Data.ToArray())), result!, messages);
    }

    /// <summary>In-process captures of the same request, as raw bytes.</summary>
    private Dictionary<string, byte[]> LocalCaptures(int[][] rows, IReadOnlyList<string> hooks, InterpMesh.Runtime.Hooks.PositionSelection? positions = null)
    {
        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var m = server.Local.Transformer;
        var (ids, mask) = TokenBatch.Pad(rows.Select(r => (IReadOnlyList<int>)r).ToList(), PaddingSide.Left);
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(hooks, positions)], null);
        var result = new Dictionary<string, byte[]>();
        m.Forward(ids, mask, plan, (h, t) =>
        {
            var c = t.contiguous();
            var bytes = new byte[c.numel() * 4];
            c.bytes.CopyTo(bytes);
            result[h.Name] = bytes;
        }, LogitsMode.None);
        return result;
    }

    [Fact]
    public async Task Health_is_serving_once_the_model_is_loaded()
    {
        var health = new Health.HealthClient(server.Channel);
        var reply = await health.CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, reply.Status);
    }

    [Fact]
    public async Task Model_info_lists_the_hook_catalogue()
    {
        var info = await server.Client.GetModelInfoAsync(new GetModelInfoRequest());
        Assert.Equal("llama2.c", info.Architecture);
        Assert.Equal("llama", info.ModelType); // what llama.cpp control vectors name as their model hint
        Assert.Equal(5, info.NLayers);
        Assert.Equal(4, info.NKvHeads);
        Assert.Equal(DType.Float32, info.Dtype);
        Assert.Equal(server.Local.Transformer.Hooks.All.Select(h => (h.Name, h.Shape)), info.Hooks.Select(h => (h.Name, h.Shape)));
        // Structured dimension names beside the template, literal sizes kept.
        Assert.Equal(["batch", "head", "query_pos", "key_pos"], info.Hooks.Single(h => h.Name == "blocks.2.attn.hook_pattern").Dims);
        Assert.Equal(["batch", "pos", "kv_head", "d_head"], info.Hooks.Single(h => h.Name == "blocks.0.attn.hook_k").Dims);
        Assert.Equal(["batch", "pos", "1"], info.Hooks.Single(h => h.Name == "blocks.0.ln1.hook_scale").Dims);
        Assert.All(info.Hooks, h => Assert.Equal(h.Shape, "[" + string.Join(", ", h.Dims) + "]"));
        Assert.Equal(1, info.BosTokenId);
        Assert.True(info.TokenizerAddsBos);
    }

    [Fact]
    public async Task Tokenize_and_detokenize_round_trip()
    {
        var request = new TokenizeRequest();
        request.Texts.AddRange(["Once upon a time", "a"]);
        var response = await server.Client.TokenizeAsync(request);
        Assert.Equal([1, 403, 407, 261, 378], response.Tokens[0].Ids);
        var back = new DetokenizeRequest();
        back.Tokens.Add(response.Tokens[0]);
        Assert.Equal("Once upon a time", (await server.Client.DetokenizeAsync(back)).Texts[0]);
    }

    [Fact]
    public async Task Captured_activations_are_bit_identical_to_in_process_capture()
    {
        string[] hooks = ["blocks.*.hook_resid_post", "blocks.2.attn.hook_pattern", "blocks.0.attn.hook_k"];
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.None } };
        request.Inputs.AddRange([Ids(PromptA), Ids(PromptB)]);
        var capture = new Capture();
        capture.Hooks.AddRange(hooks);
        request.Captures.Add(capture);

        var (captures, result, messages) = await Call(server.Client, request);
        var local = LocalCaptures([PromptA, PromptB], hooks);
        Assert.Equal(local.Keys.Order(), captures.Keys.Order());
        foreach (var (hook, bytes) in local)
            Assert.True(bytes.AsSpan().SequenceEqual(captures[hook].Data), $"{hook} differs from the in-process capture");
        Assert.Equal([2, 8, 5, 5], captures["blocks.2.attn.hook_pattern"].Shape);
        Assert.Null(result.Logits);
        // Streaming order: activations by stage, result last; no chunk over the limit.
        Assert.NotNull(messages[^1].Result);
        Assert.All(messages.Where(m => m.Activation is not null), m => Assert.True(m.Activation.Data.Length <= ServerFixture.ChunkBytes));
    }

    [Fact]
    public async Task Large_captures_stream_in_chunks_under_the_limit()
    {
        var prompt = Enumerable.Range(0, 400).Select(i => 3 + i % 500).ToArray();
        var request = new RunRequest();
        request.Inputs.Add(Ids(prompt));
        var capture = new Capture();
        capture.Hooks.Add("blocks.1.attn.hook_pattern"); // 8 × 400 × 400 floats = 5.1 MB, over the 4 MiB message limit
        request.Captures.Add(capture);
        var (captures, _, messages) = await Call(server.Client, request);
        var local = LocalCaptures([prompt], ["blocks.1.attn.hook_pattern"]);
        Assert.True(local["blocks.1.attn.hook_pattern"].AsSpan().SequenceEqual(captures["blocks.1.attn.hook_pattern"].Data));
        Assert.True(messages.Count > 1000);
        Assert.All(messages.Where(m => m.Activation is not null), m => Assert.True(m.CalculateSize() < ServerFixture.ChunkBytes + 256));
    }

    [Fact]
    public async Task Interventions_over_grpc_change_logits_as_in_process()
    {
        var steer = new float[64];
        Array.Fill(steer, 0.5f);
        var value = new InterpMesh.Contracts.V1.Tensor { Dtype = DType.Float32, Data = ByteString.CopyFrom(steer.SelectMany(BitConverter.GetBytes).ToArray()) };
        value.Shape.Add(64);
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        request.Inputs.Add(Ids(PromptA));
        request.Interventions.Add(new InterpMesh.Contracts.V1.Intervention { Hook = "blocks.1.hook_resid_post", Op = InterpMesh.Contracts.V1.InterventionOp.Add, Value = value });
        request.Interventions.Add(new InterpMesh.Contracts.V1.Intervention { Hook = "blocks.3.attn.hook_z", Op = InterpMesh.Contracts.V1.InterventionOp.ZeroAblate, Heads = { 2 } });
        var (_, result, _) = await Call(server.Client, request);
        var remote = new float[512];
        Buffer.BlockCopy(result.Logits.Data.ToByteArray(), 0, remote, 0, 2048);

        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var m = server.Local.Transformer;
        var plan = HookPlan.Build(m.Hooks, null,
        [
            new InterpMesh.Runtime.Hooks.Intervention("blocks.1.hook_resid_post", InterpMesh.Runtime.Hooks.InterventionOp.Add, full(64, 0.5f)),
            new InterpMesh.Runtime.Hooks.Intervention("blocks.3.attn.hook_z", InterpMesh.Runtime.Hooks.InterventionOp.ZeroAblate, Heads: [2]),
        ]);
        var expected = m.Forward(tensor(PromptA.Select(x => (long)x).ToArray(), [1, 5]), null, plan, null, LogitsMode.Last)!.data<float>().ToArray();
        var clean = m.Forward(tensor(PromptA.Select(x => (long)x).ToArray(), [1, 5]), null, HookPlan.Empty, null, LogitsMode.Last)!.data<float>().ToArray();
        Assert.Equal(expected, remote);
        Assert.NotEqual(clean, remote);
    }

    [Fact]
    public async Task Interventions_restricted_to_rows_change_only_those_rows()
    {
        // Three copies of one prompt; row 1 is ablated at head 2 of block 3, row 2 steered at
        // position 2. Each row must equal a forward of that row alone with its own intervention.
        var steer = new float[64];
        Array.Fill(steer, 0.5f);
        var value = new InterpMesh.Contracts.V1.Tensor { Dtype = DType.Float32, Data = ByteString.CopyFrom(steer.SelectMany(BitConverter.GetBytes).ToArray()) };
        value.Shape.Add(64);
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        for (int i = 0; i < 3; i++)
            request.Inputs.Add(Ids(PromptA));
        request.Interventions.Add(new InterpMesh.Contracts.V1.Intervention { Hook = "blocks.3.attn.hook_z", Op = InterpMesh.Contracts.V1.InterventionOp.ZeroAblate, Heads = { 2 }, Rows = { 1 } });
        request.Interventions.Add(new InterpMesh.Contracts.V1.Intervention { Hook = "blocks.1.hook_resid_post", Op = InterpMesh.Contracts.V1.InterventionOp.Add, Value = value, Positions = { 2 }, Rows = { 2 } });
        var (_, result, _) = await Call(server.Client, request);
        var remote = new float[3 * 512];
        Buffer.BlockCopy(result.Logits.Data.ToByteArray(), 0, remote, 0, remote.Length * 4);
        Assert.True(result.Receipts[0].ElementsChanged > 0);
        Assert.Equal(64, result.Receipts[1].ElementsChanged);

        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var m = server.Local.Transformer;
        var ids = tensor(PromptA.Select(x => (long)x).ToArray(), [1, 5]);
        float[] Alone(params InterpMesh.Runtime.Hooks.Intervention[] ivs) =>
            m.Forward(ids, null, ivs.Length == 0 ? HookPlan.Empty : HookPlan.Build(m.Hooks, null, ivs), null, LogitsMode.Last)!.data<float>().ToArray();
        var expected = new[]
        {
            Alone(),
            Alone(new InterpMesh.Runtime.Hooks.Intervention("blocks.3.attn.hook_z", InterpMesh.Runtime.Hooks.InterventionOp.ZeroAblate, Heads: [2])),
            Alone(new InterpMesh.Runtime.Hooks.Intervention("blocks.1.hook_resid_post", InterpMesh.Runtime.Hooks.InterventionOp.Add, full(64, 0.5f), Positions: [2])),
        };
        for (int r = 0; r < 3; r++)
        {
            var row = remote.AsSpan(r * 512, 512).ToArray();
            Assert.All(row.Zip(expected[r]), p => Assert.Equal(p.Second, p.First, 1e-4f));
        }
        Assert.NotEqual(expected[0], expected[1]);
        Assert.NotEqual(expected[0], expected[2]);
    }

    [Fact]
    public async Task Top_k_logits_and_loss()
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last, TopK = 3 }, Loss = true };
        request.Inputs.Add(Ids(PromptA));
        var (_, result, _) = await Call(server.Client, request);
        Assert.Equal([1, 1, 3], result.TopK.Ids.Shape);
        var ids = new long[3];
        Buffer.BlockCopy(result.TopK.Ids.Data.ToByteArray(), 0, ids, 0, 24);

        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var logits = server.Local.Transformer.Forward(tensor(PromptA.Select(x => (long)x).ToArray(), [1, 5]), null, HookPlan.Empty, null, LogitsMode.All)!;
        Assert.Equal(logits[0, ^1].topk(3).indexes.data<long>().ToArray(), ids);
        var expectedLoss = nn.functional.cross_entropy(logits[0, ..^1], tensor(PromptA[1..].Select(x => (long)x).ToArray())).item<float>();
        Assert.Equal(expectedLoss, result.Loss!.Value, 4);
    }

    [Fact]
    public async Task Generate_streams_per_step_captures_before_each_steps_tokens()
    {
        var request = new GenerateRequest { MaxNewTokens = 3, NoDefaultStop = true };
        request.Prompts.Add(Ids(PromptA));
        request.Captures.Add(new Capture { Hooks = { "blocks.4.hook_resid_post" }, Positions = new InterpMesh.Contracts.V1.PositionSelection { Last = true } });
        var captures = new List<(int Step, float[] Values)>();
        var tokens = new List<int>();
        using (var call = server.Client.Generate(request))
        {
            await foreach (var message in call.ResponseStream.ReadAllAsync())
            {
                if (message.Activation is { } a)
                {
                    Assert.Equal(tokens.Count, message.Step); // chunks of a step come before its tokens
                    Assert.Equal([1L, 1, 64], a.Shape);
                    var values = new float[64];
                    Buffer.BlockCopy(a.Data.ToByteArray(), 0, values, 0, 256);
                    captures.Add((message.Step, values));
                }
                else
                {
                    tokens.Add(message.TokenIds[0]);
                }
            }
        }
        Assert.Equal([0, 1, 2], captures.Select(c => c.Step));

        // Each step's capture is the last position of a full forward over the sequence so far.
        using var mode = inference_mode();
        using var scope = NewDisposeScope();
        var m = server.Local.Transformer;
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.4.hook_resid_post"], InterpMesh.Runtime.Hooks.PositionSelection.Last)], null);
        for (int step = 0; step < 3; step++)
        {
            int[] sequence = [.. PromptA, .. tokens.Take(step)];
            float[]? expected = null;
            m.Forward(tensor(sequence.Select(x => (long)x).ToArray(), [1, sequence.Length]), null, plan, (_, t) => expected = t.contiguous().data<float>().ToArray(), LogitsMode.None);
            Assert.True(expected!.Zip(captures[step].Values).Max(p => Math.Abs(p.First - p.Second)) < 1e-4, $"step {step}");
        }
    }

    [Fact]
    public async Task Generate_streams_the_golden_greedy_tokens()
    {
        var request = new GenerateRequest { MaxNewTokens = 55, Sampling = new SamplingParameters() };
        request.Prompts.Add(new Input { Text = "Once upon a time" });
        request.StopTokenIds.Add(1);
        var tokens = new List<int>();
        using var call = server.Client.Generate(request);
        await foreach (var m in call.ResponseStream.ReadAllAsync())
            tokens.Add(m.TokenIds[0]);
        Assert.Equal([473, 473, 473, 473, 473, 473, 473, 483, 339, 260, 403, 305, 299, 302, 310, 1], tokens);
    }
}
