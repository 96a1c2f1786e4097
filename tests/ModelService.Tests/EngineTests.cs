using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.Engine.Outputs;
using InterpMesh.Engine.Requests;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Loading;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Tests;

/// <summary>A server with a small output buffer and a short stall time, so a client that stops reading is seen quickly.</summary>
public sealed class EngineServerFixture : ServerFixture
{
    public const double StallSeconds = 3;

    protected override Dictionary<string, string?> Overrides => new()
    {
        ["ModelService:OutputBufferBytes"] = (64 * 1024).ToString(),
        ["ModelService:StallTimeoutSeconds"] = StallSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["ModelService:BatchWindowMs"] = "0",
    };
}

/// <summary>
/// The engine's scheduling through a real Kestrel server: no head-of-line blocking behind a
/// generation or a client that stops reading, continuous batching that changes no result, receipts.
/// </summary>
public sealed class EngineTests(EngineServerFixture server) : IClassFixture<EngineServerFixture>
{
    private static Input Ids(params int[] ids) => new() { Tokens = new TokenIds { Ids = { ids } } };

    private static RunRequest SmallRun() => new()
    {
        Inputs = { Ids(1, 403, 407, 261, 378) },
        Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last },
    };

    private static GenerateRequest LongGenerate(int tokens, params string[] captures)
    {
        var r = new GenerateRequest { Prompts = { Ids(1, 20, 300) }, MaxNewTokens = tokens, NoDefaultStop = true };
        if (captures.Length > 0)
            r.Captures.Add(new Capture { Hooks = { captures } });
        return r;
    }

    private async Task<RunResult> RunAsync(RunRequest request, CancellationToken ct = default)
    {
        using var call = server.Client.Run(request, deadline: DateTime.UtcNow + CallDeadline, cancellationToken: ct);
        RunResult? result = null;
        await foreach (var m in call.ResponseStream.ReadAllAsync(ct))
            result = m.Result ?? result;
        return result!;
    }

    [Fact]
    public async Task Model_info_reports_the_serving_limits()
    {
        var limits = (await server.Client.GetModelInfoAsync(new GetModelInfoRequest())).Limits;
        Assert.Equal(16, limits.MaxBatch);
        Assert.Equal(64, limits.MaxForwardRows);
        Assert.Equal(64, limits.MaxDecodeRows);
        Assert.Equal(ServerFixture.CaptureBudget, limits.MaxCaptureBytes);
        Assert.Equal(ServerFixture.ChunkBytes, limits.MaxChunkBytes);
        Assert.Equal(64 * 1024, limits.OutputBufferBytes);
        Assert.Equal(EngineServerFixture.StallSeconds, limits.StallTimeoutSeconds);
    }

    [Fact]
    public async Task A_run_issued_during_a_400_token_generation_completes_before_the_generation_ends()
    {
        using var call = server.Client.Generate(LongGenerate(400));
        Assert.True(await call.ResponseStream.MoveNext());
        var generation = Task.Run(async () =>
        {
            int steps = 1;
            while (await call.ResponseStream.MoveNext())
            {
                if (call.ResponseStream.Current.TokenIds.Count > 0)
                    steps++;
            }
            return (Stopwatch.GetTimestamp(), steps);
        });
        var result = await RunAsync(SmallRun());
        long runDone = Stopwatch.GetTimestamp();
        var (generationDone, stepCount) = await generation;
        Assert.Equal(400, stepCount);
        Assert.NotNull(result.Logits);
        Assert.True(runDone < generationDone, "the Run waited for the whole generation");
    }

    [Fact]
    public async Task A_client_that_stops_reading_delays_no_one_and_resumes_when_it_reads()
    {
        // Captures of every hook at every step fill the 64 KiB buffer (and HTTP/2's windows) quickly.
        using var stalled = server.Client.Generate(LongGenerate(300, "blocks.*"));
        Assert.True(await stalled.ResponseStream.MoveNext());
        int steps = stalled.ResponseStream.Current.TokenIds.Count > 0 ? 1 : 0;
        await Task.Delay(500);

        // Other clients, across the same replica, are served while that one reads nothing.
        var run = await RunAsync(SmallRun()).WaitAsync(TimeSpan.FromSeconds(EngineServerFixture.StallSeconds - 1));
        Assert.NotNull(run.Logits);
        var other = server.Client.Generate(new GenerateRequest { Prompts = { Ids(1, 5, 6) }, MaxNewTokens = 20, NoDefaultStop = true });
        int otherSteps = 0;
        await foreach (var m in other.ResponseStream.ReadAllAsync().WithCancellation(new CancellationTokenSource(TimeSpan.FromSeconds(EngineServerFixture.StallSeconds - 1)).Token))
        {
            if (m.TokenIds.Count > 0)
                otherSteps++;
        }
        Assert.Equal(20, otherSteps);
        other.Dispose();

        // Reading again, before the stall time, gets the whole generation.
        bool final = false;
        while (await stalled.ResponseStream.MoveNext())
        {
            if (stalled.ResponseStream.Current.TokenIds.Count > 0)
            {
                steps++;
                final = stalled.ResponseStream.Current.Final;
            }
        }
        Assert.Equal(300, steps);
        Assert.True(final);
    }

    [Fact]
    public async Task A_client_that_never_reads_again_is_ended_with_resource_exhausted_after_the_stall_time()
    {
        using var stalled = server.Client.Generate(LongGenerate(300, "blocks.*"));
        Assert.True(await stalled.ResponseStream.MoveNext());
        await Task.Delay(TimeSpan.FromSeconds(EngineServerFixture.StallSeconds + 2));
        // Meanwhile the server still serves.
        Assert.NotNull((await RunAsync(SmallRun())).Logits);
        var error = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await stalled.ResponseStream.MoveNext())
            {
            }
        });
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Contains("output buffer limit", error.Status.Detail);
        // Sending the request again would stall again for the same reader: "do not retry".
        Assert.Equal("-1", error.Trailers.GetValue(Contracts.RetryPushback.Trailer));
    }

    private sealed record Generated(List<int> Tokens, List<float[]> Captures, int MaxForwardRows, List<Contracts.V1.InterventionReceipt> Receipts);

    private static GenerateRequest Varied(int i, int dModel)
    {
        var prompts = new[] { new[] { 1, 403, 407 }, new[] { 1, 20, 300, 45, 9 }, new[] { 1, 7 }, new[] { 1, 99, 98, 97 } };
        var r = new GenerateRequest { MaxNewTokens = 24 + 3 * i, NoDefaultStop = true };
        r.Prompts.Add(Ids(prompts[i % 4]));
        if (i % 3 == 0)
            r.Prompts.Add(Ids(prompts[(i + 1) % 4]));
        if (i % 2 == 1)
            r.Sampling = new SamplingParameters { Temperature = 0.8, TopK = 40, Seed = 100 + i };
        if (i % 4 == 2)
        {
            var v = Enumerable.Range(0, dModel).Select(k => (float)Math.Sin(k + i)).ToArray();
            r.Interventions.Add(new Contracts.V1.Intervention
            {
                Hook = "blocks.1.hook_resid_post",
                Op = Contracts.V1.InterventionOp.Add,
                Value = new Contracts.V1.Tensor { Dtype = DType.Float32, Shape = { dModel }, Data = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan())) },
            });
        }
        if (i % 4 == 3)
            r.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.0.attn.hook_z", Op = Contracts.V1.InterventionOp.ZeroAblate, Heads = { 1 } });
        r.Captures.Add(new Capture { Hooks = { "blocks.2.hook_resid_post" }, Positions = new Contracts.V1.PositionSelection { Last = true } });
        return r;
    }

    /// <summary>How long one call may take before it fails its test (a hang then fails one test, with this message, not the run).</summary>
    internal static readonly TimeSpan CallDeadline = TimeSpan.FromMinutes(2);

    private async Task<Generated> Collect(GenerateRequest request)
    {
        using var call = server.Client.Generate(request, deadline: DateTime.UtcNow + CallDeadline);
        var tokens = new List<int>();
        var captures = new List<float[]>();
        var receipts = new List<Contracts.V1.InterventionReceipt>();
        int maxRows = 0;
        try
        {
            await foreach (var m in call.ResponseStream.ReadAllAsync())
            {
                if (m.Activation is { } a)
                {
                    Assert.Equal(a.TotalBytes, a.Data.Length);
                    captures.Add(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(a.Data.Span).ToArray());
                }
                else
                {
                    tokens.AddRange(m.TokenIds);
                    maxRows = Math.Max(maxRows, m.ForwardBatchSize);
                    receipts.AddRange(m.Receipts);
                }
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded)
        {
            Assert.Fail($"the Generate call got no complete answer within {CallDeadline.TotalMinutes} minutes ({tokens.Count} tokens so far): the server hung");
        }
        return new Generated(tokens, captures, maxRows, receipts);
    }

    [Fact]
    public async Task Eight_concurrent_generations_produce_exactly_what_each_produces_alone()
    {
        int d = server.Local.Config.DModel;
        var requests = Enumerable.Range(0, 8).Select(i => Varied(i, d)).ToArray();
        var alone = new List<Generated>();
        foreach (var r in requests)
            alone.Add(await Collect(r));
        // One capture per step, one token per prompt per step.
        Assert.All(alone, g => Assert.True(g.Captures.Count > 0 && g.Tokens.Count % g.Captures.Count == 0));

        var together = await Task.WhenAll(requests.Select(Collect));
        Assert.Contains(together, g => g.MaxForwardRows > 2);
        for (int i = 0; i < requests.Length; i++)
        {
            var diffs = alone[i].Captures.Zip(together[i].Captures, (a, b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max()).ToList();
            Assert.True(alone[i].Tokens.SequenceEqual(together[i].Tokens),
                $"request {i}: alone [{string.Join(",", alone[i].Tokens)}] together [{string.Join(",", together[i].Tokens)}] diffs [{string.Join(",", diffs.Select(x => x.ToString("G2")))}]");
            Assert.Equal(alone[i].Captures.Count, together[i].Captures.Count);
            for (int s = 0; s < alone[i].Captures.Count; s++)
            {
                var (a, b) = (alone[i].Captures[s], together[i].Captures[s]);
                Assert.Equal(a.Length, b.Length);
                float worst = a.Zip(b, (x, y) => Math.Abs(x - y)).Max();
                Assert.True(worst <= 1e-4f, $"request {i} step {s}: captures differ by {worst}");
            }
            Assert.Equal(alone[i].Receipts.Select(r => r.ElementsChanged), together[i].Receipts.Select(r => r.ElementsChanged));
        }
    }

    [Fact]
    public async Task Run_receipts_equal_a_second_computation_including_a_zero_receipt()
    {
        int d = server.Local.Config.DModel;
        var v = Enumerable.Range(0, d).Select(k => k % 5 == 0 ? 0f : 0.1f * k).ToArray();
        RunRequest Request(bool intervene)
        {
            var r = new RunRequest { Inputs = { Ids(1, 403, 407, 261, 378), Ids(1, 20, 300) }, Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
            r.Captures.Add(new Capture { Hooks = { "blocks.1.hook_resid_post" } });
            if (intervene)
            {
                r.Interventions.Add(new Contracts.V1.Intervention
                {
                    Hook = "blocks.1.hook_resid_post",
                    Op = Contracts.V1.InterventionOp.Add,
                    Positions = { 1, 3 },
                    Value = new Contracts.V1.Tensor { Dtype = DType.Float32, Shape = { d }, Data = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan())) },
                });
                // Scaling by one changes nothing: its receipt must say so.
                r.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.*.hook_mlp_out", Op = Contracts.V1.InterventionOp.Scale, Scale = 1.0 });
            }
            return r;
        }
        async Task<(float[] Capture, RunResult Result)> Call(RunRequest r)
        {
            using var call = server.Client.Run(r);
            var bytes = new MemoryStream();
            RunResult? result = null;
            await foreach (var m in call.ResponseStream.ReadAllAsync())
            {
                if (m.Activation is { } a)
                    a.Data.WriteTo(bytes);
                else
                    result = m.Result;
            }
            return (System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.ToArray()).ToArray(), result!);
        }
        var (clean, _) = await Call(Request(false));
        var (steered, result) = await Call(Request(true));

        long changed = 0;
        double squares = 0;
        for (int i = 0; i < clean.Length; i++)
        {
            double diff = (double)steered[i] - clean[i];
            if (steered[i] != clean[i])
                changed++;
            squares += diff * diff;
        }
        Assert.Equal(2, result.Receipts.Count);
        var add = result.Receipts[0];
        Assert.Equal(["blocks.1.hook_resid_post"], add.MatchedHooks);
        Assert.Equal(changed, add.ElementsChanged);
        // Two rows × two positions × the non-zero entries of v.
        Assert.Equal(2 * 2 * v.Count(x => x != 0), add.ElementsChanged);
        Assert.Equal(Math.Sqrt(squares), add.L2Norm, 3);
        var scale = result.Receipts[1];
        Assert.Equal(server.Local.Config.NLayers, scale.MatchedHooks.Count);
        Assert.Equal(0, scale.ElementsChanged);
        Assert.Equal(0, scale.L2Norm);
    }

    [Fact]
    public async Task Generate_receipts_sum_over_steps_and_report_zero_when_the_position_is_never_reached()
    {
        int d = server.Local.Config.DModel;
        var v = Enumerable.Repeat(0.5f, d).ToArray();
        var value = new Contracts.V1.Tensor { Dtype = DType.Float32, Shape = { d }, Data = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan())) };
        var request = new GenerateRequest { Prompts = { Ids(1, 20, 300) }, MaxNewTokens = 6, NoDefaultStop = true };
        // Position 5 is the third generated token's position (prompt of 3): touched once.
        request.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.0.hook_resid_post", Op = Contracts.V1.InterventionOp.Add, Positions = { 5 }, Value = value });
        // Every position, every step: one row × d per step (prompt step: 3 positions).
        request.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.0.hook_resid_pre", Op = Contracts.V1.InterventionOp.Add, Value = value });
        var g = await Collect(request);
        Assert.Equal(2, g.Receipts.Count);
        Assert.Equal(d, g.Receipts[0].ElementsChanged);
        Assert.Equal(0.5 * Math.Sqrt(d), g.Receipts[0].L2Norm, 4);
        Assert.Equal((3 + 5) * d, g.Receipts[1].ElementsChanged);
        // Sum of per-step norms: sqrt(3) for the prompt step, then 1 per step.
        Assert.Equal(0.5 * Math.Sqrt(d) * (Math.Sqrt(3) + 5), g.Receipts[1].L2Norm, 3);

        // Position 9 lies within prompt + max_new_tokens (3 + 8), but every id is a stop id: the
        // generation ends after one token and never reaches it, and the receipt says nothing changed.
        var short1 = new GenerateRequest { Prompts = { Ids(1, 20, 300) }, MaxNewTokens = 8, NoDefaultStop = true };
        short1.Interventions.Add(new Contracts.V1.Intervention { Hook = "blocks.0.hook_resid_post", Op = Contracts.V1.InterventionOp.Add, Positions = { 9 }, Value = value });
        short1.StopTokenIds.Add(Enumerable.Range(0, server.Local.Config.VocabSize).ToArray());
        var stopped = await Collect(short1);
        Assert.Single(stopped.Tokens);
        Assert.Equal(0, stopped.Receipts.Single().ElementsChanged);
        Assert.Equal(0, stopped.Receipts.Single().L2Norm);
    }
}

/// <summary>The engine in process, on a GPT-2-small-shaped model whose blocks take long enough to time.</summary>
public sealed class EngineCancellationTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_cancelled_run_stops_within_one_block_and_frees_the_engine()
    {
        InterpMesh.Runtime.Execution.TorchRuntime.Initialize();
        var config = Presets.Config("gpt2-small");
        using var model = new LoadedModel(Presets.CreateRandom(config, seed: 5), null, "gpt2-small (random)");
        using var engine = new ModelEngine(model, new EngineOptions { BatchWindowMs = 0 });
        var rng = new Random(3);
        var rows = Enumerable.Range(0, 4).Select(_ => InputSpec.FromIds(Enumerable.Range(0, 512).Select(_ => rng.Next(config.VocabSize)).ToArray())).ToList();
        var spec = new RunSpec { Inputs = rows, Logits = LogitsMode.Last };

        var blocks = new List<(int Layer, long At)>();
        using var cts = new CancellationTokenSource();
        long cancelledAt = 0;
        Thread? canceller = null;
        void OnBlock(int layer)
        {
            lock (blocks)
                blocks.Add((layer, Stopwatch.GetTimestamp()));
            // Once: the engine's later small run passes through layer 0 too.
            if (layer == 0 && canceller is null)
            {
                // Cancel in the middle of the next block, 20 ms after the first one completed, from a
                // thread of its own: a continuation on the (busy) thread pool could come blocks later.
                canceller = new Thread(() =>
                {
                    Thread.Sleep(20);
                    Volatile.Write(ref cancelledAt, Stopwatch.GetTimestamp());
                    cts.Cancel();
                }) { IsBackground = true };
                canceller.Start();
            }
        }
        model.Transformer.BlockCompleted += OnBlock;
        try
        {
            var run = Task.Run(async () =>
            {
                await foreach (var _ in engine.RunAsync(spec, cts.Token))
                {
                }
            });
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
            long stoppedAt = Stopwatch.GetTimestamp();
            canceller!.Join();

            (int, long)[] seen;
            lock (blocks)
                seen = [.. blocks];
            var after = seen.Where(b => b.Item2 > cancelledAt).ToArray();
            double blockMs = seen.Length > 1 ? (seen[^1].Item2 - seen[0].Item2) * 1000.0 / Stopwatch.Frequency / (seen.Length - 1) : double.NaN;
            output.WriteLine($"blocks completed before cancel: {seen.Length - after.Length}, after: {after.Length}; cancel → request ended {(stoppedAt - cancelledAt) * 1000.0 / Stopwatch.Frequency:F1} ms; one block ≈ {blockMs:F1} ms");
            Assert.True(after.Length <= 1, $"{after.Length} blocks ran after the cancel");
            Assert.True(seen.Length < config.NLayers, "the forward ran to the end");

            // The engine is free: a small run completes.
            var small = new RunSpec { Inputs = [InputSpec.FromIds([1, 2, 3])], Logits = LogitsMode.Last };
            var outputs = new List<EngineOutput>();
            await foreach (var o in engine.RunAsync(small))
                outputs.Add(o);
            Assert.IsType<RunOutcome>(Assert.Single(outputs));
        }
        finally
        {
            model.Transformer.BlockCompleted -= OnBlock;
        }
    }
}

/// <summary>Many clients that cancel, stop reading early or are refused: every request ends cleanly, none with an internal error.</summary>
public sealed class EngineChurnTests
{
    [Fact]
    public async Task Cancelling_leaving_and_refused_clients_never_cause_an_internal_error()
    {
        InterpMesh.Runtime.Execution.TorchRuntime.Initialize();
        using var model = ModelLoader.Load(RepoPaths.Models("stories260K/stories260K.bin"));
        using var engine = new ModelEngine(model, new EngineOptions { MaxConcurrentRequests = 3, AdmissionWait = TimeSpan.Zero, BatchWindowMs = 1 });
        var unexpected = new System.Collections.Concurrent.ConcurrentBag<Exception>();
        int completed = 0, cancelled = 0, refused = 0, left = 0;
        const int clientCount = 8, perClient = 25;
        var clients = Enumerable.Range(0, clientCount).Select(c => Task.Run(async () =>
        {
            var rng = new Random(c);
            for (int n = 0; n < perClient; n++)
            {
                using var cts = new CancellationTokenSource();
                if (rng.Next(3) == 0)
                    cts.CancelAfter(rng.Next(1, 15));
                IAsyncEnumerable<EngineOutput> outputs = rng.Next(2) == 0
                    ? engine.RunAsync(new RunSpec
                    {
                        Inputs = [InputSpec.FromIds([1, 403, 407, .. Enumerable.Range(0, rng.Next(1, 30)).Select(_ => rng.Next(512))])],
                        Captures = rng.Next(2) == 0 ? [new CaptureSpec { Hooks = ["blocks.*.hook_resid_post"] }] : [],
                        Logits = LogitsMode.Last,
                    }, cts.Token)
                    : engine.GenerateAsync(new GenerateSpec
                    {
                        Prompts = [InputSpec.FromIds([1, rng.Next(512)]), InputSpec.FromIds([1, 5, rng.Next(512)])],
                        MaxNewTokens = rng.Next(1, 30),
                        StopIds = [],
                        Captures = rng.Next(2) == 0 ? [new CaptureSpec { Hooks = ["blocks.0.*"] }] : [],
                    }, cts.Token);
                bool leaveEarly = rng.Next(4) == 0;
                try
                {
                    await foreach (var _ in outputs)
                    {
                        if (leaveEarly)
                            break;
                    }
                    if (leaveEarly)
                        Interlocked.Increment(ref left);
                    else
                        Interlocked.Increment(ref completed);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (EngineBusyException)
                {
                    Interlocked.Increment(ref refused);
                    await Task.Delay(1);
                }
                catch (Exception e)
                {
                    unexpected.Add(e);
                }
            }
        })).ToArray();
        await Task.WhenAll(clients);
        Assert.True(unexpected.IsEmpty, string.Join("\n", unexpected.Take(3).Select(e => e.ToString())));
        // Every request ended one of the expected ways (how many of each depends on timing).
        Assert.Equal(clientCount * perClient, completed + cancelled + refused + left);
        Assert.True(completed > 0, $"completed {completed}, cancelled {cancelled}, refused {refused}, left early {left}");
        // Every slot comes back and the engine still serves.
        for (int i = 0; i < 100 && engine.Admitted > 0; i++)
            await Task.Delay(20);
        Assert.Equal(0, engine.Admitted);
        var last = new List<EngineOutput>();
        await foreach (var o in engine.RunAsync(new RunSpec { Inputs = [InputSpec.FromIds([1, 2, 3])], Logits = LogitsMode.Last }))
            last.Add(o);
        Assert.IsType<RunOutcome>(Assert.Single(last));
    }
}
