using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;

namespace InterpMesh.Runtime.Tests.Forward;

/// <summary>Batches and padding must not change any real token's result.</summary>
public sealed class BatchingTests(ShippedModels models) : TorchTest, IClassFixture<ShippedModels>
{
    private static readonly int[][] Prompts = [[1, 403, 407, 261, 378], [1, 20, 300], [1, 45, 46, 47, 48, 49, 50, 51], [7]];

    public static TheoryData<string, PaddingSide> Cases => new()
    {
        { "stories-hf", PaddingSide.Left }, { "stories-hf", PaddingSide.Right },
        { "stories-bin", PaddingSide.Left }, { "gpt2-tiny", PaddingSide.Left }, { "gpt2-tiny", PaddingSide.Right },
    };

    private LoadedModel Model(string name) => name switch
    {
        "stories-hf" => models.StoriesHf,
        "stories-bin" => models.StoriesBin,
        _ => models.Gpt2Tiny,
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Padded_batch_gives_each_row_its_unpadded_logits(string model, PaddingSide side)
    {
        var m = Model(model).Transformer;
        var (ids, mask) = TokenBatch.Pad(Prompts, side);
        var batched = m.Forward(ids, mask, HookPlan.Empty, null, LogitsMode.All)!;
        int width = (int)ids.shape[1];
        for (int r = 0; r < Prompts.Length; r++)
        {
            var alone = m.Forward(Ids(Prompts[r]), null, HookPlan.Empty, null, LogitsMode.All)!;
            int start = side == PaddingSide.Left ? width - Prompts[r].Length : 0;
            var real = batched[r].narrow(0, start, Prompts[r].Length);
            double diff = MaxAbsDiff(real, alone[0]);
            Assert.True(diff <= 1e-4, $"{model} {side}: row {r} differs from its unpadded run by {diff:E2}");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Last_logits_of_a_padded_batch_are_each_rows_last_real_token(string model, PaddingSide side)
    {
        var m = Model(model).Transformer;
        var (ids, mask) = TokenBatch.Pad(Prompts, side);
        var last = m.Forward(ids, mask, HookPlan.Empty, null, LogitsMode.Last)!;
        for (int r = 0; r < Prompts.Length; r++)
        {
            var alone = m.Forward(Ids(Prompts[r]), null, HookPlan.Empty, null, LogitsMode.Last)!;
            Assert.True(MaxAbsDiff(last[r, 0], alone[0, 0]) <= 1e-4, $"{model} {side}: row {r}");
        }
    }

    [Fact]
    public void Captured_activations_of_padded_rows_match_unpadded_runs()
    {
        var m = models.StoriesHf.Transformer;
        var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.*.hook_resid_post"], PositionSelection.Last)], null);
        var batched = Capture(m, plan, TokenBatch.Pad(Prompts, PaddingSide.Left));
        for (int r = 0; r < Prompts.Length; r++)
        {
            var alone = Capture(m, plan, (Ids(Prompts[r]), null));
            foreach (var (name, value) in alone)
                Assert.True(MaxAbsDiff(batched[name][r], value[0]) <= 1e-4, $"{name} row {r}");
        }
    }

    private static Dictionary<string, TorchSharp.torch.Tensor> Capture(Transformer m, HookPlan plan, (TorchSharp.torch.Tensor Ids, TorchSharp.torch.Tensor? Mask) input)
    {
        var result = new Dictionary<string, TorchSharp.torch.Tensor>();
        m.Forward(input.Ids, input.Mask, plan, (h, t) => result[h.Name] = t, LogitsMode.None);
        return result;
    }
}
