namespace InterpMesh.Plugins;

/// <summary>
/// Throw this when the caller's input is wrong in a way the parameter schema cannot express (an
/// empty dataset, a single class, a row whose target index lies outside its text). The job fails
/// with error code <c>INVALID_ARGUMENT</c> and your message, which should name the offending field
/// or row and say how to fix it. Any other exception fails the job with code <c>INTERNAL</c>.
/// </summary>
public sealed class InvalidParametersException : ArgumentException
{
    /// <summary>Creates the exception with a message for the caller.</summary>
    public InvalidParametersException(string message) : base(message) { }

    /// <summary>Creates the exception with a message for the caller and the underlying cause.</summary>
    public InvalidParametersException(string message, Exception innerException) : base(message, innerException) { }
}
