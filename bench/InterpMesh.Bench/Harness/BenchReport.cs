namespace InterpMesh.Bench.Harness;

/// <summary>
/// What a benchmark measured: <paramref name="Values"/> are printed as one JSON document with
/// <c>--json</c> (their keys are the field names docs/benchmarks.md records), otherwise by
/// <paramref name="Text"/> when the benchmark formats its own text, or one <c>key value</c> line each.
/// </summary>
internal sealed record BenchReport(IReadOnlyDictionary<string, object?> Values, Action<TextWriter>? Text = null);
