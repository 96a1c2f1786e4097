namespace InterpMesh.Cli.CommandLine;

/// <summary>A usage error (exit code 2): the message says what to change on the command line.</summary>
public sealed class UsageException(string message) : Exception(message);
