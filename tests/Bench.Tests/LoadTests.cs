namespace InterpMesh.Bench.Tests;

/// <summary>The load tool's short run: every request is answered, overload is refused with retry info, nothing leaks.</summary>
// Not beside the in-process benchmark runs: it counts admitted and refused requests in a few seconds.
[Collection(BenchRunTests.Collection)]
public sealed class LoadTests
{
    [Fact]
    public void Under_overload_the_model_service_refuses_with_resource_exhausted_and_serves_the_rest_without_leaking_tensors()
    {
        // 24 clients against a model service that admits 2 requests at once and refuses the rest at once.
        // Its own process: the live-tensor count is per process, and other tests here use torch.
        var r = BenchRunner.RunProcess("load", "--clients", "24", "--seconds", "4", "--mix", "run=3,generate=1", "--max-concurrent", "2", "--admission-wait-ms", "0", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var result = r.Json;
        Assert.Equal(24, result.GetProperty("concurrency_held").GetInt32());
        var outcomes = result.GetProperty("outcomes").EnumerateObject().ToDictionary(o => o.Name, o => o.Value.GetInt32());
        Assert.True(outcomes.GetValueOrDefault("run OK") > 0 && outcomes.GetValueOrDefault("generate OK") > 0, string.Join(", ", outcomes));
        Assert.True(outcomes.Where(o => o.Key.EndsWith(" ResourceExhausted", StringComparison.Ordinal)).Sum(o => o.Value) > 0, $"no request was refused: {string.Join(", ", outcomes)}");
        // Nothing else: no Unavailable, Internal or deadline failures.
        Assert.All(outcomes.Keys, k => Assert.True(k.EndsWith(" OK", StringComparison.Ordinal) || k.EndsWith(" ResourceExhausted", StringComparison.Ordinal), k));
        var memory = result.GetProperty("memory");
        Assert.Equal(memory.GetProperty("live_tensors_start").GetInt64(), memory.GetProperty("live_tensors_end").GetInt64());
        // Latency of admitted requests stays bounded (the refused ones wait outside, as told by grpc-retry-pushback-ms).
        Assert.True(result.GetProperty("by_kind").GetProperty("run").GetProperty("p99_ms").GetDouble() < 5000, result.GetProperty("by_kind").ToString());
    }
}
