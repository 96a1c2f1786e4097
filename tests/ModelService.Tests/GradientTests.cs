using Grpc.Core;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine;
using InterpMesh.ModelService.Wire;
using InterpMesh.Plugins;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Loading;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Tests;

/// <summary>A ModelService with gradients switched off by configuration (ModelService:GradientMemoryBytes = 0).</summary>
public sealed class NoGradientServerFixture : ServerFixture
{
    protected override Dictionary<string, string?> Overrides => new() { ["ModelService:GradientMemoryBytes"] = "0" };
}

/// <summary>
/// Gradients over the API (RunRequest.gradient): checked against central finite differences of the
/// same metric computed by the test from the logits of perturbed Runs (ADD interventions), against
/// the closed form at the final norm, against single-row requests, and against the full gradient's
/// slices; plain Runs beside gradient Runs are unchanged; bad requests name their field.
/// </summary>
public sealed class GradientTests(ServerFixture server, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    private static readonly int[] PromptA = [1, 403, 407, 261, 378];
    private static readonly int[] PromptB = [1, 20, 300];
    private static readonly int[] PromptC = [1, 20, 300, 41, 99];

    /// <summary>A float32 tensor on the test side: shape and row-major values.</summary>
    private sealed record Dense(long[] Shape, float[] Data)
    {
        public long Stride(int dim) => Shape.Skip(dim + 1).Aggregate(1L, (a, b) => a * b);

        /// <summary>Elements of row <paramref name="row"/>, position <paramref name="pos"/> (dim 1).</summary>
        public float[] At(int row, int pos)
        {
            long inner = Stride(1);
            return Data.AsSpan((int)(row * Stride(0) + pos * inner), (int)inner).ToArray();
        }
    }

    private sealed record Outputs(Dictionary<string, Dense> Captures, Dictionary<string, Dense> Gradients, RunResult Result);

    private static Input Ids(params int[] ids)
    {
        var t = new TokenIds();
        t.Ids.AddRange(ids);
        return new Input { Tokens = t };
    }

    private static Dense FromWire(WireTensor t) => new([.. t.Shape], t.ToFloat32());

    /// <summary>A Run over gRPC, its chunks reassembled by the shared assembler (keyed on hook and gradient flag).</summary>
    private static async Task<Outputs> Call(Contracts.V1.ModelService.ModelServiceClient client, RunRequest request)
    {
        var captures = new Dictionary<string, Dense>();
        var gradients = new Dictionary<string, Dense>();
        RunResult? result = null;
        var assembler = new ChunkAssembler();
        using var call = client.Run(request);
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            if (m.Result is { } r)
            {
                result = r;
                continue;
            }
            if (assembler.Add(m.Activation) is { } a)
                (a.Gradient ? gradients : captures).Add(a.Hook, FromWire(a.Tensor));
        }
        Assert.NotNull(result);
        return new(captures, gradients, result!);
    }

    /// <summary>A Run through the SDK's in-process client (RunOutput.Gradient says which is which).</summary>
    private static async Task<Outputs> Call(IModelClient client, RunRequest request)
    {
        var captures = new Dictionary<string, Dense>();
        var gradients = new Dictionary<string, Dense>();
        RunResult? result = null;
        await foreach (var output in client.RunAsync(request))
        {
            if (output.Result is { } r)
            {
                result = r;
                continue;
            }
            using var t = output.Activation!;
            using var f = t.to(ScalarType.Float32).contiguous();
            (output.Gradient ? gradients : captures).Add(output.Hook!, new Dense(f.shape, f.data<float>().ToArray()));
        }
        Assert.NotNull(result);
        return new(captures, gradients, result!);
    }

    private static RunRequest Request(int[][] rows, GradientRequest? gradient = null, bool logits = false)
    {
        var request = new RunRequest { Gradient = gradient };
        foreach (var r in rows)
            request.Inputs.Add(Ids(r));
        if (logits)
            request.Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.All };
        return request;
    }

    private static Contracts.V1.Intervention Add(string hook, Dense value, double scale)
    {
        var scaled = value.Data.Select(v => (float)(v * scale)).ToArray();
        return new Contracts.V1.Intervention { Hook = hook, Op = InterventionOp.Add, Value = WireTensor.FromFloat32(scaled, value.Shape).ToProto() };
    }

    private static Dense RandomLike(long[] shape, int seed)
    {
        var random = new Random(seed);
        var data = new float[shape.Aggregate(1L, (a, b) => a * b)];
        for (int i = 0; i < data.Length; i++)
        {
            // Box–Muller: standard normal components.
            double u = 1.0 - random.NextDouble(), v = random.NextDouble();
            data[i] = (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
        }
        return new Dense(shape, data);
    }

    private static double Dot(Dense a, Dense b)
    {
        Assert.Equal(a.Shape, b.Shape);
        double sum = 0;
        for (int i = 0; i < a.Data.Length; i++)
            sum += (double)a.Data[i] * b.Data[i];
        return sum;
    }

    /// <summary>
    /// The metric per row, computed here in float64 from a Run's logits (all positions) — the
    /// second computation path the engine's metric and gradient are checked against.
    /// </summary>
    private static double[] Metrics(GradientRequest g, RunResult result)
    {
        var logits = FromWire(WireTensor.FromProto(result.Logits, "logits"));
        var ids = WireTensor.FromProto(result.Tokens, "tokens").ToInt64();
        var mask = WireTensor.FromProto(result.AttentionMask, "mask").ToInt64();
        int b = (int)logits.Shape[0], t = (int)logits.Shape[1], vocab = (int)logits.Shape[2];
        var metrics = new double[b];
        for (int r = 0; r < b; r++)
        {
            int last = Enumerable.Range(0, t).Last(j => mask[r * t + j] != 0);
            double LogSumExp(float[] row)
            {
                double max = row.Max();
                return max + Math.Log(row.Sum(x => Math.Exp(x - max)));
            }
            switch (g.MetricCase)
            {
                case GradientRequest.MetricOneofCase.Loss:
                    {
                        double sum = 0;
                        int n = 0;
                        for (int j = 0; j + 1 < t; j++)
                        {
                            if (mask[r * t + j] == 0 || mask[r * t + j + 1] == 0)
                                continue;
                            var row = logits.At(r, j);
                            sum += LogSumExp(row) - row[ids[r * t + j + 1]];
                            n++;
                        }
                        metrics[r] = sum / n;
                        break;
                    }
                case GradientRequest.MetricOneofCase.Logit:
                case GradientRequest.MetricOneofCase.LogProb:
                    {
                        var target = g.Logit ?? g.LogProb;
                        int pos = target.Position is int p ? (p < 0 ? t + p : p) : last;
                        int token = target.Tokens[target.Tokens.Count == 1 ? 0 : r];
                        var row = logits.At(r, pos);
                        metrics[r] = row[token] - (g.MetricCase == GradientRequest.MetricOneofCase.LogProb ? LogSumExp(row) : 0);
                        break;
                    }
                case GradientRequest.MetricOneofCase.LogitDifference:
                    {
                        var row = logits.At(r, last);
                        var d = g.LogitDifference;
                        var correct = d.Correct[d.Correct.Count == 1 ? 0 : r].Ids;
                        var incorrect = d.Incorrect[d.Incorrect.Count == 1 ? 0 : r].Ids;
                        metrics[r] = correct.Average(id => (double)row[id]) - incorrect.Average(id => (double)row[id]);
                        break;
                    }
                default:
                    throw new ArgumentException("no metric");
            }
        }
        return metrics;
    }

    private static GradientRequest Metric(string name, params string[] hooks)
    {
        var g = name switch
        {
            "loss" => new GradientRequest { Loss = true },
            // One token per row, last real token.
            "logit" => new GradientRequest { Logit = new TokenTarget { Tokens = { 403, 20 } } },
            // One token for every row, at an absolute position counted from the end (real in both rows).
            "log_prob" => new GradientRequest { LogProb = new TokenTarget { Tokens = { 407 }, Position = -2 } },
            // Per-row correct sets, one incorrect set for all.
            "logit_difference" => new GradientRequest
            {
                LogitDifference = new LogitDifference
                {
                    Correct = { new TokenSet { Ids = { 407 } }, new TokenSet { Ids = { 300, 20 } } },
                    Incorrect = { new TokenSet { Ids = { 261, 5 } } },
                },
            },
            _ => throw new ArgumentException(name),
        };
        g.Hooks.AddRange(hooks);
        return g;
    }

    /// <summary>
    /// Central differences of the metric along a random direction v (standard normal elements) at
    /// each hook, the perturbed metrics computed from the logits of Runs with ADD ±h·v, against the
    /// served gradient dotted with v. The forward is float32, so the step cannot be tiny (rounding in
    /// the metric, ~1e-5, is divided by h) nor large (curvature): central differences at h = 6e-3
    /// and 3e-3 are combined by Richardson extrapolation, (4·D(h/2) − D(h)) / 3, which cancels the
    /// h² term. Tolerance: 2e-2 relative plus 2e-3 absolute.
    /// </summary>
    private async Task FiniteDifferencesMatch(Func<RunRequest, Task<Outputs>> call, int[][] rows, GradientRequest g,
        IReadOnlyList<Contracts.V1.Intervention>? extra = null, Func<string, Dense, Dense>? direction = null)
    {
        const double h = 6e-3;
        var request = Request(rows, g, logits: true);
        request.Interventions.AddRange(extra ?? []);
        var served = await call(request);
        // The served metric is the test's metric of the same forward's logits.
        var expected = Metrics(g, served.Result);
        Assert.Equal(expected.Length, served.Result.RowMetrics.Count);
        for (int r = 0; r < expected.Length; r++)
            Assert.True(Math.Abs(expected[r] - served.Result.RowMetrics[r]) <= 1e-4 * Math.Max(1, Math.Abs(expected[r])), $"row {r}: metric {served.Result.RowMetrics[r]} vs {expected[r]}");
        Assert.Equal(served.Result.RowMetrics.Sum(), served.Result.Metric!.Value);

        int seed = 7;
        foreach (var hook in g.Hooks)
        {
            var gradient = served.Gradients[hook];
            var v = RandomLike(gradient.Shape, seed++);
            if (direction is not null)
                v = direction(hook, v);
            double analytic = Dot(gradient, v);
            async Task<double> MetricAt(double step)
            {
                var perturbed = Request(rows, logits: true);
                perturbed.Interventions.AddRange(extra ?? []);
                perturbed.Interventions.Add(Add(hook, v, step));
                return Metrics(g, (await call(perturbed)).Result).Sum();
            }
            double wide = (await MetricAt(h) - await MetricAt(-h)) / (2 * h);
            double narrow = (await MetricAt(h / 2) - await MetricAt(-h / 2)) / h;
            double numeric = (4 * narrow - wide) / 3;
            output.WriteLine($"{g.MetricCase} at {hook}: gradient·v {analytic:G6}, central differences {wide:G6} (h = {h}), {narrow:G6} (h/2), extrapolated {numeric:G6}, relative error {Math.Abs(numeric - analytic) / Math.Abs(analytic):G3}");
            Assert.True(Math.Abs(analytic) > 1e-3, $"{g.MetricCase} at {hook}: the directional derivative {analytic} is too small to test anything");
            Assert.True(Math.Abs(numeric - analytic) <= 2e-2 * Math.Abs(analytic) + 2e-3,
                $"{g.MetricCase} at {hook}: finite differences {numeric} vs gradient·v {analytic}");
        }
    }

    [Theory]
    [InlineData("loss")]
    [InlineData("logit")]
    [InlineData("log_prob")]
    [InlineData("logit_difference")]
    public async Task Gradients_match_finite_differences_for_each_metric(string metric)
    {
        var g = Metric(metric, "blocks.0.hook_resid_post", "blocks.1.attn.hook_z");
        await FiniteDifferencesMatch(r => Call(server.Client, r), [PromptA, PromptB], g);
    }

    [Fact]
    public async Task Gradients_match_finite_differences_on_a_layer_norm_model_through_the_in_process_client()
    {
        // gpt2-tiny: LayerNorm, learned positions, biases; created on a torch thread in inference mode.
        TorchRuntime.Initialize();
        using var worker = new TorchWorker();
        var model = worker.Run(() => new LoadedModel(Presets.CreateRandom(Presets.Config("gpt2-tiny"), 3), null, "preset gpt2-tiny"));
        try
        {
            using var engine = new ModelEngine(model, new EngineOptions());
            var client = new InProcessModelClient(engine);
            var g = Metric("logit_difference", "blocks.0.hook_resid_mid", "blocks.1.attn.hook_pattern", "ln_final.hook_scale");
            await FiniteDifferencesMatch(r => Call(client, r), [PromptA, PromptB], g);
        }
        finally
        {
            worker.Run(() =>
            {
                model.Dispose();
                return 0;
            });
        }
    }

    [Fact]
    public async Task The_gradient_of_a_logit_at_the_final_norm_is_the_gain_times_the_unembedding_column()
    {
        const int token = 407;
        var g = new GradientRequest { Logit = new TokenTarget { Tokens = { token } }, Hooks = { "ln_final.hook_normalized" } };
        var served = await Call(server.Client, Request([PromptA], g));
        var grad = served.Gradients["ln_final.hook_normalized"];

        // The weights as GetWeights serves them (TransformerLens names and layouts).
        var weights = new Dictionary<string, Dense>();
        var assembler = new ChunkAssembler();
        using (var call = server.Client.GetWeights(new GetWeightsRequest { Names = { "ln_final.w", "unembed.W_U" } }))
        {
            await foreach (var m in call.ResponseStream.ReadAllAsync())
            {
                if (assembler.Add(m.Chunk) is { } w)
                    weights[w.Hook] = FromWire(w.Tensor);
            }
        }
        var gain = weights["ln_final.w"].Data;
        var unembed = weights["unembed.W_U"];
        int d = gain.Length, vocab = (int)unembed.Shape[1];
        Assert.Equal([1L, PromptA.Length, d], grad.Shape);
        var last = grad.At(0, PromptA.Length - 1);
        for (int i = 0; i < d; i++)
            Assert.True(Math.Abs(last[i] - gain[i] * unembed.Data[i * vocab + token]) <= 1e-5, $"element {i}: {last[i]} vs {gain[i] * unembed.Data[i * vocab + token]}");
        // Earlier positions do not reach the last logit through the (position-wise) final norm.
        for (int p = 0; p < PromptA.Length - 1; p++)
            Assert.All(grad.At(0, p), x => Assert.Equal(0f, x));
    }

    [Fact]
    public async Task Gradients_at_a_patched_run_are_the_patched_forwards()
    {
        // SET the residual after block 0 at position 2 and at the last position: what feeds only those
        // positions (block 0's MLP output there; the block's input at the last position, which no later
        // position reads) no longer reaches the metric; everything else still does, through the patched forward.
        var rng = RandomLike([64], 11);
        var set = new Contracts.V1.Intervention
        {
            Hook = "blocks.0.hook_resid_post", Op = InterventionOp.Set, Value = WireTensor.FromFloat32(rng.Data, 64).ToProto(),
            Positions = { 2, PromptA.Length - 1 },
        };
        var g = new GradientRequest { Logit = new TokenTarget { Tokens = { 403 } }, Hooks = { "blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre" } };
        var request = Request([PromptA], g);
        request.Interventions.Add(set);
        var served = await Call(server.Client, request);
        var mlp = served.Gradients["blocks.0.hook_mlp_out"];
        var pre = served.Gradients["blocks.0.hook_resid_pre"];
        foreach (int p in new[] { 2, PromptA.Length - 1 })
            Assert.All(mlp.At(0, p), x => Assert.Equal(0f, x));
        Assert.All(pre.At(0, PromptA.Length - 1), x => Assert.Equal(0f, x));
        Assert.Contains(mlp.At(0, 1), x => x != 0);
        Assert.Contains(pre.At(0, 2), x => x != 0);
        Assert.Single(served.Result.Receipts);
        Assert.True(served.Result.Receipts[0].ElementsChanged > 0);

        // Finite differences of the patched forward agree (perturbing the block's input everywhere).
        await FiniteDifferencesMatch(r => Call(server.Client, r), [PromptA], g, [set]);
    }

    [Fact]
    public async Task Each_row_gets_its_own_metrics_gradient()
    {
        // Two rows of one length (no padding), different target tokens, and a SET restricted to row 1.
        var set = new Contracts.V1.Intervention
        {
            Hook = "blocks.2.hook_resid_post", Op = InterventionOp.ZeroAblate, Positions = { 1 }, Rows = { 1 },
        };
        string hook = "blocks.1.hook_resid_post";
        var both = new GradientRequest { Logit = new TokenTarget { Tokens = { 403, 99 } }, Hooks = { hook } };
        var request = Request([PromptA, PromptC], both);
        request.Interventions.Add(set);
        var batched = await Call(server.Client, request);

        var alone0 = await Call(server.Client, Request([PromptA], new GradientRequest { Logit = new TokenTarget { Tokens = { 403 } }, Hooks = { hook } }));
        var single1 = Request([PromptC], new GradientRequest { Logit = new TokenTarget { Tokens = { 99 } }, Hooks = { hook } });
        single1.Interventions.Add(new Contracts.V1.Intervention { Hook = set.Hook, Op = InterventionOp.ZeroAblate, Positions = { 1 } });
        var alone1 = await Call(server.Client, single1);

        var g = batched.Gradients[hook];
        Assert.Equal(2, batched.Result.RowMetrics.Count);
        Assert.True(Math.Abs(alone0.Result.Metric!.Value - batched.Result.RowMetrics[0]) <= 1e-4);
        Assert.True(Math.Abs(alone1.Result.Metric!.Value - batched.Result.RowMetrics[1]) <= 1e-4);
        double diff = 0;
        for (int p = 0; p < PromptA.Length; p++)
        {
            var a = alone0.Gradients[hook].At(0, p);
            var b = alone1.Gradients[hook].At(0, p);
            var r0 = g.At(0, p);
            var r1 = g.At(1, p);
            for (int i = 0; i < a.Length; i++)
            {
                Assert.True(Math.Abs(r0[i] - a[i]) <= 1e-5 + 1e-4 * Math.Abs(a[i]), $"row 0, position {p}, element {i}: {r0[i]} vs {a[i]}");
                Assert.True(Math.Abs(r1[i] - b[i]) <= 1e-5 + 1e-4 * Math.Abs(b[i]), $"row 1, position {p}, element {i}: {r1[i]} vs {b[i]}");
                diff += Math.Abs(r0[i] - r1[i]);
            }
        }
        Assert.True(diff > 1e-2, "the two rows' gradients should differ");
    }

    private static float ToBFloat16(float x)
    {
        // Round to nearest even, as torch's float32 → bfloat16 conversion.
        uint bits = BitConverter.SingleToUInt32Bits(x);
        bits += 0x7FFF + ((bits >> 16) & 1);
        return BitConverter.UInt32BitsToSingle(bits & 0xFFFF0000);
    }

    [Fact]
    public async Task Position_and_dtype_selection_slice_the_full_gradient()
    {
        string hook = "blocks.1.hook_resid_post", scores = "blocks.1.attn.hook_attn_scores";
        GradientRequest G(Contracts.V1.PositionSelection? positions, DType dtype) => new()
        {
            LogProb = new TokenTarget { Tokens = { 261 } }, Hooks = { hook, scores }, Positions = positions, Dtype = dtype,
        };
        int[][] rows = [PromptA, PromptB];
        var full = (await Call(server.Client, Request(rows, G(null, DType.Unspecified)))).Gradients;
        var last = await Call(server.Client, Request(rows, G(new Contracts.V1.PositionSelection { Last = true }, DType.Bfloat16)));
        var indices = await Call(server.Client, Request(rows, G(new Contracts.V1.PositionSelection { Indices = new TokenIds { Ids = { 1, -1 } } }, DType.Float32)));
        int t = PromptA.Length;
        int[] lastReal = [t - 1, t - 1];   // left padding: every row ends at the last position

        var l = last.Gradients[hook];
        Assert.Equal([2L, 1, 64], l.Shape);
        for (int r = 0; r < 2; r++)
        {
            var want = full[hook].At(r, lastReal[r]);
            var got = l.At(r, 0);
            for (int i = 0; i < want.Length; i++)
                Assert.True(Math.Abs(got[i] - ToBFloat16(want[i])) <= Math.Abs(want[i]) / 128 + 1e-12, $"row {r} element {i}: {got[i]} vs {want[i]}");
        }
        // Attention scores select query positions (dim 2).
        Assert.Equal([2L, 8, 1, t], last.Gradients[scores].Shape);

        var x = indices.Gradients[hook];
        Assert.Equal([2L, 2, 64], x.Shape);
        for (int r = 0; r < 2; r++)
        {
            int k = 0;
            foreach (int p in new[] { 1, t - 1 })
            {
                var want = full[hook].At(r, p);
                var got = x.At(r, k++);
                for (int i = 0; i < want.Length; i++)
                    Assert.True(Math.Abs(got[i] - want[i]) <= 1e-6 + 1e-5 * Math.Abs(want[i]), $"row {r} position {p} element {i}: {got[i]} vs {want[i]}");
            }
        }
        // A capture and a gradient of the same hook in one request stay apart.
        var both = Request(rows, G(null, DType.Unspecified));
        both.Captures.Add(new Capture { Hooks = { hook } });
        var mixed = await Call(server.Client, both);
        Assert.Equal(full[hook].Data, mixed.Gradients[hook].Data);
        Assert.NotEqual(mixed.Captures[hook].Data, mixed.Gradients[hook].Data);
    }

    [Fact]
    public async Task Plain_runs_beside_gradient_runs_are_bit_identical_to_plain_runs_alone()
    {
        var plain = Request([PromptA, PromptC], logits: true);
        plain.Captures.Add(new Capture { Hooks = { "blocks.*.hook_resid_post" } });
        plain.Loss = true;
        var alone = await Call(server.Client, plain);

        RunRequest WithGradient()
        {
            var r = Request([PromptA, PromptC], Metric("loss", "blocks.*.hook_resid_post"), logits: true);
            r.Loss = true;
            return r;
        }
        var gradients = Enumerable.Range(0, 3).Select(_ => Call(server.Client, WithGradient())).ToList();
        var beside = Call(server.Client, plain);
        var all = await Task.WhenAll(gradients.Append(beside));
        var together = await beside;

        Assert.Equal(alone.Result.Logits.Data, together.Result.Logits.Data);
        Assert.Equal(alone.Result.Loss, together.Result.Loss);
        foreach (var (hook, value) in alone.Captures)
            Assert.Equal(value.Data, together.Captures[hook].Data);
        Assert.Empty(together.Gradients);
        Assert.Null(together.Result.Metric);
        // Gradient Runs never share a forward, and their logits are the plain forward's.
        foreach (var g in all.Take(3))
        {
            Assert.Equal(2, g.Result.ForwardBatchSize);
            Assert.Equal(5, g.Gradients.Count);
            var a = WireTensor.FromProto(alone.Result.Logits, "a").ToFloat32();
            var b = WireTensor.FromProto(g.Result.Logits, "b").ToFloat32();
            Assert.True(a.Zip(b).All(p => Math.Abs(p.First - p.Second) <= 1e-4 * Math.Max(1, Math.Abs(p.First))));
            Assert.True(Math.Abs(alone.Result.Loss!.Value - g.Result.Loss!.Value) <= 1e-4);
            // The loss metric is RunResult.loss per row (rows of equal length: their mean is the loss).
            Assert.True(Math.Abs(g.Result.Metric!.Value / 2 - g.Result.Loss!.Value) <= 1e-4);
        }
    }

    [Fact]
    public async Task A_cancelled_gradient_run_ends_cancelled_and_inference_is_unchanged_after_it()
    {
        var plain = Request([PromptA, PromptB], logits: true);
        var before = await Call(server.Client, plain);

        // 16 rows × 256 tokens: far longer than the 10 ms before the client cancels.
        var rows = Enumerable.Range(0, 16).Select(r => Enumerable.Range(0, 256).Select(i => 1 + (i * 11 + r) % 500).ToArray()).ToArray();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(10));
        var error = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = server.Client.Run(Request(rows, new GradientRequest { Loss = true, Hooks = { "blocks.*.hook_resid_post" } }), cancellationToken: cts.Token);
            await foreach (var _ in call.ResponseStream.ReadAllAsync(cts.Token))
            {
            }
        });
        Assert.Equal(StatusCode.Cancelled, error.StatusCode);

        await StillServes();
        var after = await Call(server.Client, plain);
        Assert.Equal(before.Result.Logits.Data, after.Result.Logits.Data);
    }

    [Fact]
    public async Task A_hook_the_metric_does_not_reach_gets_a_zero_gradient()
    {
        // With hook_attn_in materialised, q/k/v come from per-head copies of the residual; ln1's own
        // hooks see the unsplit residual and no longer reach the output.
        var request = Request([PromptA], new GradientRequest { Loss = true, Hooks = { "blocks.0.ln1.hook_scale" } });
        request.Captures.Add(new Capture { Hooks = { "blocks.0.hook_attn_in" } });
        var served = await Call(server.Client, request);
        var g = served.Gradients["blocks.0.ln1.hook_scale"];
        Assert.Equal([1L, PromptA.Length, 1], g.Shape);
        Assert.All(g.Data, x => Assert.Equal(0f, x));
        Assert.True(served.Result.Metric > 0);
        Assert.Single(served.Captures);
    }

    public static TheoryData<string, string> BadRequests => new()
    {
        { "no-metric", "gradient: no metric is set" },
        { "no-hooks", "gradient.hooks is empty" },
        { "unknown-hook", "gradient.hooks: unknown hook 'blocks.0.hook_resid_postt'" },
        { "token-outside-vocab", "gradient.logit.tokens[0] = 512 is outside the vocabulary (0..511)" },
        { "token-count", "gradient.log_prob.tokens has 3 tokens for a batch of 2 rows" },
        { "position-past", "gradient.logit.position: position 9 is past the sequence of 5 positions" },
        { "position-before", "gradient.log_prob.position: position -6 is before the start of the sequence of 5 positions" },
        { "empty-set", "gradient.logit_difference.correct[1] has no ids" },
        { "set-count", "gradient.logit_difference.incorrect has 3 sets for a batch of 2 rows" },
        { "no-sets", "gradient.logit_difference.correct is empty" },
        { "set-outside-vocab", "gradient.logit_difference.incorrect[0] has id -1, outside the vocabulary" },
        { "dtype", "gradient.dtype must be FLOAT32, BFLOAT16 or FLOAT16" },
        { "positions", "gradient.positions: position 5 is outside the sequence of 5 positions" },
        { "loss-one-token", "gradient.loss needs at least two tokens in every row" },
    };

    private static GradientRequest Bad(string name)
    {
        var hooks = new[] { "blocks.0.hook_resid_post" };
        GradientRequest g = name switch
        {
            "no-metric" => new GradientRequest(),
            "no-hooks" => new GradientRequest { Loss = true },
            "unknown-hook" => new GradientRequest { Loss = true, Hooks = { "blocks.0.hook_resid_postt" } },
            "token-outside-vocab" => new GradientRequest { Logit = new TokenTarget { Tokens = { 512 } } },
            "token-count" => new GradientRequest { LogProb = new TokenTarget { Tokens = { 1, 2, 3 } } },
            "position-past" => new GradientRequest { Logit = new TokenTarget { Tokens = { 1 }, Position = 9 } },
            "position-before" => new GradientRequest { LogProb = new TokenTarget { Tokens = { 1 }, Position = -6 } },
            "empty-set" => new GradientRequest { LogitDifference = new LogitDifference { Correct = { new TokenSet { Ids = { 1 } }, new TokenSet() }, Incorrect = { new TokenSet { Ids = { 2 } } } } },
            "set-count" => new GradientRequest { LogitDifference = new LogitDifference { Correct = { new TokenSet { Ids = { 1 } } }, Incorrect = { new TokenSet { Ids = { 2 } }, new TokenSet { Ids = { 2 } }, new TokenSet { Ids = { 2 } } } } },
            "no-sets" => new GradientRequest { LogitDifference = new LogitDifference { Incorrect = { new TokenSet { Ids = { 2 } } } } },
            "set-outside-vocab" => new GradientRequest { LogitDifference = new LogitDifference { Correct = { new TokenSet { Ids = { 1 } } }, Incorrect = { new TokenSet { Ids = { -1 } } } } },
            "dtype" => new GradientRequest { Loss = true, Dtype = DType.Int64 },
            "positions" => new GradientRequest { Loss = true, Positions = new Contracts.V1.PositionSelection { Indices = new TokenIds { Ids = { 0, 5 } } } },
            "loss-one-token" => new GradientRequest { Loss = true },
            _ => throw new ArgumentException(name),
        };
        if (name != "no-hooks" && name != "unknown-hook")
            g.Hooks.AddRange(hooks);
        return g;
    }

    private async Task StillServes()
    {
        var ok = await Call(server.Client, Request([PromptA], new GradientRequest { Loss = true, Hooks = { "blocks.0.hook_resid_post" } }));
        Assert.True(ok.Result.Metric!.Value > 0);
        Assert.Single(ok.Gradients);
    }

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Bad_gradient_requests_are_invalid_argument_naming_the_field(string name, string message)
    {
        int[][] rows = name == "loss-one-token" ? [PromptA, [1]] : [PromptA, PromptB];
        var error = await Assert.ThrowsAsync<RpcException>(() => Call(server.Client, Request(rows, Bad(name))));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(message, error.Status.Detail, StringComparison.Ordinal);
        await StillServes();
    }

    [Fact]
    public async Task Over_budget_gradient_requests_are_resource_exhausted()
    {
        // Autograd memory: 16 rows of 512 tokens is estimated over the default 1 GiB budget.
        var rows = Enumerable.Range(0, 16).Select(r => Enumerable.Range(0, 512).Select(i => 1 + (i * 7 + r) % 500).ToArray()).ToArray();
        var error = await Assert.ThrowsAsync<RpcException>(() => Call(server.Client, Request(rows, new GradientRequest { Loss = true, Hooks = { "blocks.0.hook_resid_post" } })));
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Matches(@"the gradient needs an estimated [\d,]+ bytes of autograd memory \(16 rows × 512 positions × 5 layers", error.Status.Detail);
        Assert.Contains("over this server's gradient budget of 1,073,741,824 bytes; send fewer rows or shorter inputs", error.Status.Detail, StringComparison.Ordinal);
        await StillServes();

        // Output bytes: gradients count against the capture budget (8 MiB here) like captures.
        var four = rows.Take(4).ToArray();
        var bytes = await Assert.ThrowsAsync<RpcException>(() => Call(server.Client, Request(four, new GradientRequest { Loss = true, Hooks = { "blocks.0.attn.hook_attn_scores" } })));
        Assert.Equal(StatusCode.ResourceExhausted, bytes.StatusCode);
        Assert.Contains("and gradients (33,554,432 bytes)", bytes.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("over this server's per-request budget of 8,388,608", bytes.Status.Detail, StringComparison.Ordinal);
        await StillServes();

        var info = await server.Client.GetModelInfoAsync(new GetModelInfoRequest());
        Assert.Equal(1L << 30, info.Limits.MaxGradientBytes);
    }

    [Fact]
    public async Task A_half_precision_model_refuses_gradients_saying_what_to_do()
    {
        TorchRuntime.Initialize();
        using var worker = new TorchWorker();
        var model = worker.Run(() => ModelLoader.Load(RepoPaths.Models("stories260K/stories260K.bin"), dtype: ScalarType.BFloat16));
        try
        {
            using var engine = new ModelEngine(model, new EngineOptions());
            var client = new InProcessModelClient(engine);
            var error = await Assert.ThrowsAsync<RpcException>(() => Call(client, Request([PromptA], new GradientRequest { Loss = true, Hooks = { "blocks.0.hook_resid_post" } })));
            Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
            Assert.StartsWith("gradient: this server holds the model in bfloat16", error.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("float32 replica", error.Status.Detail, StringComparison.Ordinal);
            // Inference goes on.
            var plain = await Call(client, Request([PromptA], logits: true));
            Assert.NotNull(plain.Result.Logits);
        }
        finally
        {
            worker.Run(() =>
            {
                model.Dispose();
                return 0;
            });
        }
    }
}

/// <summary>Gradients switched off by configuration: INVALID_ARGUMENT naming <c>gradient</c>; everything else serves.</summary>
public sealed class DisabledGradientTests(NoGradientServerFixture server) : IClassFixture<NoGradientServerFixture>
{
    [Fact]
    public async Task Gradient_requests_are_refused_when_the_budget_is_zero()
    {
        var request = new RunRequest
        {
            Inputs = { new Input { Tokens = new TokenIds { Ids = { 1, 403, 407 } } } },
            Gradient = new GradientRequest { Loss = true, Hooks = { "blocks.0.hook_resid_post" } },
        };
        var error = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = server.Client.Run(request);
            await foreach (var _ in call.ResponseStream.ReadAllAsync())
            {
            }
        });
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.StartsWith("gradient: gradients are disabled on this server (ModelService:GradientMemoryBytes is 0)", error.Status.Detail, StringComparison.Ordinal);

        request.Gradient = null;
        request.Loss = true;
        using var ok = server.Client.Run(request);
        RunResult? result = null;
        await foreach (var m in ok.ResponseStream.ReadAllAsync())
            result = m.Result ?? result;
        Assert.True(result!.Loss > 0);
        var info = await server.Client.GetModelInfoAsync(new GetModelInfoRequest());
        Assert.Equal(0L, info.Limits.MaxGradientBytes);
    }
}

[CollectionDefinition(nameof(GradientMemory), DisableParallelization = true)]
public sealed class GradientMemory;

/// <summary>Gradient requests free their autograd graph: resident memory stays flat over many of them.</summary>
/// <remarks>Runs alone: other tests allocating at the same time would move the resident-memory figure.</remarks>
[Collection(nameof(GradientMemory))]
public sealed class GradientMemoryTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task Resident_memory_stays_flat_over_many_gradient_requests()
    {
        TorchRuntime.Initialize();
        using var worker = new TorchWorker();
        var model = worker.Run(() => ModelLoader.Load(RepoPaths.Models("stories260K/stories260K.bin")));
        try
        {
            using var engine = new ModelEngine(model, new EngineOptions());
            var client = new InProcessModelClient(engine);
            // 4 rows × 96 tokens: the engine estimates ~27 MB of autograd memory per request, so a
            // graph kept alive by each request would add most of a gigabyte over the measured 30.
            var request = new RunRequest
            {
                Gradient = new GradientRequest { Loss = true, Hooks = { "blocks.*.hook_resid_post", "blocks.2.attn.hook_pattern" }, Positions = new Contracts.V1.PositionSelection { Last = true } },
                Interventions = { new Contracts.V1.Intervention { Hook = "blocks.1.hook_resid_mid", Op = InterventionOp.ZeroAblate, Positions = { 3 }, Rows = { 1 } } },
            };
            for (int r = 0; r < 4; r++)
                request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { Enumerable.Range(0, 96).Select(i => 1 + (i * 13 + r * 7) % 500) } } });
            async Task Many(int n)
            {
                for (int i = 0; i < n; i++)
                {
                    await foreach (var o in client.RunAsync(request))
                        o.Activation?.Dispose();
                }
            }
            await Many(10);
            var plainRequest = request.Clone();
            plainRequest.Gradient = null;
            plainRequest.Loss = true;
            var w0 = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; i < 10; i++)
            {
                await foreach (var o in client.RunAsync(plainRequest))
                {
                }
            }
            double plain = w0.Elapsed.TotalMilliseconds / 10;
            var watch = System.Diagnostics.Stopwatch.StartNew();
            await Many(30);
            double perRequest = watch.Elapsed.TotalMilliseconds / 30;
            long middle = System.Diagnostics.Process.GetCurrentProcess().WorkingSet64;
            await Many(30);
            long after = System.Diagnostics.Process.GetCurrentProcess().WorkingSet64;
            long estimate = Engine.Requests.RequestValidator.GradientMemory(model.Config, 4, 96, 4);
            output.WriteLine($"estimated autograd memory {estimate:N0} bytes; {perRequest:F1} ms per gradient request (4 × 96 tokens, 6 hooks), {plain:F1} ms per plain Run of the same inputs; resident memory {middle >> 20} MB → {after >> 20} MB over 30 more");
            Assert.True(after - middle < 64L << 20, $"resident memory grew by {(after - middle) >> 20} MB over 30 gradient requests");
        }
        finally
        {
            worker.Run(() =>
            {
                model.Dispose();
                return 0;
            });
        }
    }
}
