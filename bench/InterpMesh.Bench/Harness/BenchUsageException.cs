namespace InterpMesh.Bench.Harness;

/// <summary>A usage error (exit code 2): the message says what to change on the command line.</summary>
internal sealed class BenchUsageException(string message) : Exception(message);
