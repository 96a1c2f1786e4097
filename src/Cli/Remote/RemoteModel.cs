using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using InterpMesh.Cli.CommandLine;
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
    public sealed record RemoteTarget(string Url, Metadata Headers);

    /// <summary>Reads <c>--key</c> (or INTERPMESH_API_KEY) and <c>--model-name</c> for calls through a gateway.</summary>
    public static RemoteTarget Target(string url, CliArgs args)
    {
        var headers = new Metadata();
        var settings = CliSettings.Load();
        if ((args.Text("key") ?? settings.ApiKey) is { Length: > 0 } key)
            headers.Add("authorization", $"Bearer {key}");
        if ((args.Text("model-name") ?? settings.Model) is { Length: > 0 } model)
            headers.Add("interpmesh-model", model);
        return new RemoteTarget(url, headers);
    }

    private static Contracts.V1.ModelService.ModelServiceClient Client(RemoteTarget target, out GrpcChannel channel)
    {
        if (!Uri.TryCreate(target.Url, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw new UsageException($"--server must be an http:// or https:// URL such as http://127.0.0.1:50051, got '{target.Url}'");
        channel = Contracts.Channels.ForAddress(uri.ToString());
        var headers = target.Headers;
        var invoker = channel.Intercept(metadata =>
        {
            foreach (var entry in headers)
                metadata.Add(entry);
            return metadata;
        });
        return new Contracts.V1.ModelService.ModelServiceClient(invoker);
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
        var client = Client(url, out var channel);
        using (channel)
        {
            var i = Call(() => client.GetModelInfo(new GetModelInfoRequest()));
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
        var client = Client(url, out var channel);
        using (channel)
            return [.. Call(() => client.Tokenize(new TokenizeRequest { Texts = { text } })).Tokens[0].Ids];
    }

    public static (int[] Prompt, int[] Generated, string? Text) Generate(RemoteTarget url, string? prompt, int[]? promptIds, int maxNew, SamplingParameters sampling, int[]? stopIds, bool noDefaultStop)
    {
        var client = Client(url, out var channel);
        using (channel)
        {
            var request = new GenerateRequest { MaxNewTokens = maxNew, Sampling = sampling, NoDefaultStop = noDefaultStop };
            request.Prompts.Add(prompt is not null ? new Input { Text = prompt } : new Input { Tokens = new TokenIds { Ids = { promptIds! } } });
            if (stopIds is not null)
                request.StopTokenIds.AddRange(stopIds);
            return Call(() =>
            {
                var generated = new List<int>();
                int[] used = promptIds ?? [];
                using var call = client.Generate(request);
                while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                {
                    var m = call.ResponseStream.Current;
                    if (m.Activation is not null)
                        continue;
                    if (m.PromptTokens.Count > 0)
                        used = [.. m.PromptTokens[0].Ids];
                    if (m.TokenIds[0] >= 0)
                        generated.Add(m.TokenIds[0]);
                }
                var info = client.GetModelInfo(new GetModelInfoRequest());
                string? text = string.IsNullOrEmpty(info.Tokenizer) ? null
                    : client.Detokenize(new DetokenizeRequest { Tokens = { new TokenIds { Ids = { generated } } } }).Texts[0];
                return (used, generated.ToArray(), text);
            });
        }
    }

    public static float[][] Forward(RemoteTarget url, int[] ids, bool all)
    {
        var client = Client(url, out var channel);
        using (channel)
        {
            var request = new RunRequest { Logits = new LogitsRequest { Mode = all ? LogitsRequest.Types.Mode.All : LogitsRequest.Types.Mode.Last } };
            request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { ids } } });
            return Call(() =>
            {
                using var call = client.Run(request);
                RunResult? result = null;
                while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                {
                    if (call.ResponseStream.Current.Result is { } r)
                        result = r;
                }
                // [1, pos, vocab]: one row per position.
                return WireTensor.FromProto(result!.Logits, "logits").ToFloat32Rows();
            });
        }
    }
}
