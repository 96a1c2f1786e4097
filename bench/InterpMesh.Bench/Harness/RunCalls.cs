using InterpMesh.Contracts.V1;

namespace InterpMesh.Bench.Harness;

/// <summary>The model-service Run requests the streaming benchmarks time, and reading a Run to its end.</summary>
internal static class RunCalls
{
    /// <summary>A Run of <paramref name="rows"/> rows of <paramref name="seq"/> random ids below <paramref name="vocab"/>, last-position logits, no captures.</summary>
    public static RunRequest Random(int rows, int seq, int vocab, Random rng)
    {
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        for (int b = 0; b < rows; b++)
            request.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { Enumerable.Range(0, seq).Select(_ => rng.Next(vocab)) } } });
        return request;
    }

    /// <summary>The same request capturing <paramref name="hooks"/> (at every position unless <paramref name="positions"/> says otherwise).</summary>
    public static RunRequest Capturing(RunRequest request, string[] hooks, PositionSelection? positions = null)
    {
        var capturing = request.Clone();
        capturing.Captures.Add(new Capture { Hooks = { hooks }, Positions = positions });
        return capturing;
    }

    /// <summary>Sends <paramref name="request"/> and reads its stream to the end; returns the activation bytes received.</summary>
    public static long Read(InterpMesh.Contracts.V1.ModelService.ModelServiceClient client, RunRequest request)
    {
        long bytes = 0;
        using var call = client.Run(request);
        while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
            bytes += call.ResponseStream.Current.Activation?.Data.Length ?? 0;
        return bytes;
    }
}
