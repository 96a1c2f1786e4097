using Grpc.Core;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Client;
using InterpMesh.Contracts.Tensors;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Cli.Remote;

/// <summary>
/// The local-mode commands against a running ModelService (<c>--server URL</c>), producing the same
/// JSON as local mode.
/// </summary>
internal static class RemoteModel
{
    /// <summary>Where remote calls go: a model service, or a gateway (with an API key and a model name when it needs them).</summary>
    public sealed record RemoteTarget(string Url, string? ApiKey, string? Model);

    /// <summary>The client library's connection to <paramref name="target"/>; a malformed URL is a usage error.</summary>
    public static MeshClient Connect(RemoteTarget target)
    {
        try
        {
            return MeshClient.Connect(target.Url, target.ApiKey, target.Model);
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--server: {e.Message.Split(" (Parameter", 2)[0]}");
        }
    }

    /// <summary>Turns a gRPC failure into the CLI's one-line error.</summary>
    public static T Call<T>(Func<T> action)
    {
        try
        {
            return action();
        }
        catch (RpcException e)
        {
            throw new InvalidOperationException(e.StatusCode == StatusCode.Unavailable
                ? $"the server is unavailable ({e.Status.Detail}); is `interpmesh serve` running at that address?"
                : $"{e.StatusCode}: {e.Status.Detail}");
        }
    }

    public static Dictionary<string, object?> Info(RemoteTarget url)
    {
        using var client = Connect(url);
        {
            var i = Call(() => client.GetModelInfoAsync().GetAwaiter().GetResult());
            return new Dictionary<string, object?>
            {
                ["architecture"] = i.Architecture,
                ["n_layers"] = i.NLayers,
                ["d_model"] = i.DModel,
                ["n_heads"] = i.NHeads,
                ["n_kv_heads"] = i.NKvHeads,
                ["d_head"] = i.DHead,
                ["d_mlp"] = i.DMlp,
                ["vocab_size"] = i.VocabSize,
                ["context_length"] = i.ContextLength,
                ["dtype"] = i.Dtype.ToString().ToLowerInvariant(),
                ["bos_token_id"] = i.BosTokenId,
                ["eos_token_id"] = i.EosTokenId,
                ["tokenizer"] = string.IsNullOrEmpty(i.Tokenizer) ? null : i.Tokenizer,
                ["hooks"] = i.Hooks.Select(h => h.Name).ToArray(),
                ["hook_shapes"] = i.Hooks.ToDictionary(h => h.Name, h => h.Shape),
            };
        }
    }

    public static int[] Tokenize(RemoteTarget url, string text)
    {
        using var client = Connect(url);
        return Call(() => client.TokenizeAsync([text]).GetAwaiter().GetResult())[0];
    }

    public static (int[] Prompt, int[] Generated, string? Text) Generate(RemoteTarget url, string? prompt, int[]? promptIds, int maxNew, SamplingParameters sampling, int[]? stopIds, bool noDefaultStop)
    {
        using var client = Connect(url);
        var request = new GenerateRequest { MaxNewTokens = maxNew, Sampling = sampling, NoDefaultStop = noDefaultStop };
        request.Prompts.Add(prompt is not null ? new Input { Text = prompt } : new Input { Tokens = new TokenIds { Ids = { promptIds! } } });
        if (stopIds is not null)
            request.StopTokenIds.AddRange(stopIds);
        return Call(() => GenerateAsync(client, request, promptIds ?? []).GetAwaiter().GetResult());
    }

    private static async Task<(int[] Prompt, int[] Generated, string? Text)> GenerateAsync(MeshClient client, GenerateRequest request, int[] used)
    {
        var generated = new List<int>();
        await foreach (var item in client.GenerateAsync(request))
        {
            if (item.Tokens is not { } m)
                continue;
            if (m.PromptTokens.Count > 0)
                used = [.. m.PromptTokens[0].Ids];
            if (m.TokenIds[0] >= 0)
                generated.Add(m.TokenIds[0]);
        }
        var info = await client.GetModelInfoAsync();
        string? text = string.IsNullOrEmpty(info.Tokenizer) ? null : (await client.DetokenizeAsync([generated.ToArray()]))[0];
        return (used, generated.ToArray(), text);
    }

    public static float[][] Forward(RemoteTarget url, int[] ids, bool all)
    {
        using var client = Connect(url);
        var request = new RunRequest { Logits = new LogitsRequest { Mode = all ? LogitsRequest.Types.Mode.All : LogitsRequest.Types.Mode.Last } };
        request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { ids } } });
        return Call(() => ForwardAsync(client, request).GetAwaiter().GetResult());
    }

    private static async Task<float[][]> ForwardAsync(MeshClient client, RunRequest request)
    {
        RunResult? result = null;
        await foreach (var item in client.RunAsync(request))
            result = item.Result ?? result;
        // [1, pos, vocab]: one row per position.
        return WireTensor.FromProto(result!.Logits, "logits").ToFloat32Rows();
    }
}
