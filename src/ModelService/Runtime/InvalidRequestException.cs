namespace InterpMesh.Runtime;

/// <summary>
/// A request the model cannot run as asked: an unknown hook, an intervention that does not fit its
/// hook, a token outside the vocabulary, a limit exceeded. The message says what to fix and quotes at
/// most a short piece of the input. Hosts map exactly this type (and its subclasses) to a client
/// error; every other exception is an internal failure.
/// </summary>
public class InvalidRequestException : ArgumentException
{
    public InvalidRequestException(string message)
        : base(message)
    {
    }

    /// <summary>Most characters of user input an error message repeats.</summary>
    public const int QuoteLimit = 100;

    /// <summary>Quotes user input for an error message, shortened to <see cref="QuoteLimit"/> characters.</summary>
    public static string Quote(string? text)
    {
        if (text is null)
            return "''";
        return text.Length <= QuoteLimit ? $"'{text}'" : $"'{text[..QuoteLimit]}…' ({text.Length} characters)";
    }
}

/// <summary>A request over a configured limit (batch rows, capture bytes, output buffer): hosts answer RESOURCE_EXHAUSTED.</summary>
public class RequestLimitException(string message) : InvalidRequestException(message);
