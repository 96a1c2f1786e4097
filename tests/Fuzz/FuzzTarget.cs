using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace InterpMesh.Fuzz;

/// <summary>What one input did to a target.</summary>
public enum Verdict
{
    /// <summary>The parser took the input.</summary>
    Accepted,

    /// <summary>The parser refused it with its documented exception type (a clean refusal).</summary>
    Refused,

    /// <summary>Anything else: an undocumented exception, a broken invariant or an allocation over the bound.</summary>
    Bug,
}

/// <summary>The result of one execution.</summary>
public sealed record Outcome(Verdict Verdict, string Signature, Exception? Exception, long AllocatedBytes, TimeSpan Elapsed)
{
    public override string ToString() => Exception is null ? $"{Verdict}: {Signature}" : $"{Verdict}: {Signature}\n{Exception}";
}

/// <summary>Thrown by a target when the parser accepted an input it must not (a broken invariant).</summary>
public sealed class InvariantViolationException(string message) : Exception(message);

/// <summary>
/// One parser of outside data. <see cref="Run"/> feeds it the bytes; the parser must accept them
/// or refuse them with one of its documented exception types (<see cref="IsCleanRefusal"/>). Any
/// other exception, a broken invariant, or managed allocation over <see cref="AllocationLimit"/>
/// is a bug.
/// </summary>
public sealed partial class FuzzTarget(string name, string refusal, Action<byte[]> run, Func<Exception, bool> isCleanRefusal)
{
    /// <summary>Constant part of the allocation bound: parsers build dictionaries, regexes, small tensors.</summary>
    public const long AllocationBase = 48L << 20;

    /// <summary>Per-input-byte part of the allocation bound.</summary>
    public const long AllocationPerByte = 400;

    public string Name { get; } = name;

    /// <summary>The documented refusal, in words (for reports).</summary>
    public string Refusal { get; } = refusal;

    public Action<byte[]> Run { get; } = run;

    public Func<Exception, bool> IsCleanRefusal { get; } = isCleanRefusal;

    /// <summary>Most managed bytes one parse of <paramref name="inputLength"/> bytes may allocate.</summary>
    public static long AllocationLimit(int inputLength) => AllocationBase + AllocationPerByte * (long)inputLength;

    /// <summary>Runs the target once and classifies the result. Never throws.</summary>
    public Outcome Execute(byte[] input)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var clock = Stopwatch.StartNew();
        Exception? error = null;
        try
        {
            Run(input);
        }
        catch (Exception e)
        {
            error = e;
        }
        clock.Stop();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        if (error is null)
        {
            return allocated > AllocationLimit(input.Length)
                ? new Outcome(Verdict.Bug, $"allocation: {allocated} bytes for a {input.Length}-byte input", null, allocated, clock.Elapsed)
                : new Outcome(Verdict.Accepted, "accepted", null, allocated, clock.Elapsed);
        }
        if (error is not InvariantViolationException && IsCleanRefusal(error))
            return new Outcome(Verdict.Refused, RefusalSignature(error), error, allocated, clock.Elapsed);
        return new Outcome(Verdict.Bug, BugSignature(error), error, allocated, clock.Elapsed);
    }

    /// <summary>
    /// Exception type plus the message's plain words (paths, quoted text, numbers and fragments of
    /// the input dropped): roughly one signature per distinct check in the parser.
    /// </summary>
    public static string RefusalSignature(Exception e)
    {
        string message = e.Message;
        // JSON syntax errors quote the input; one signature for all of them (per wrapping message).
        for (var inner = e; inner is not null; inner = inner.InnerException)
        {
            if (inner is System.Text.Json.JsonException)
                message = inner == e ? "json syntax" : message.Replace(inner.Message, " json syntax", StringComparison.Ordinal);
        }
        int json = message.IndexOf("JSON object:", StringComparison.Ordinal);
        if (json >= 0)
            json += "JSON object:".Length;
        if (json < 0)
            json = message.IndexOf("is an invalid", StringComparison.Ordinal);
        if (json < 0)
            json = message.IndexOf("LineNumber", StringComparison.Ordinal);
        if (json >= 0)
            message = message[..json] + " json syntax";
        message = FilePath().Replace(message, " ");
        message = Quoted().Replace(message, " ");
        var words = message.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(w => w.Length > 1 && w.All(char.IsAsciiLetterLower)).Take(14);
        return $"{e.GetType().Name}: {string.Join(' ', words)}";
    }

    /// <summary>Exception type and the innermost project frame: one per distinct bug.</summary>
    public static string BugSignature(Exception e)
    {
        var frames = new StackTrace(e, false).GetFrames() ?? [];
        var frame = frames.Select(f => f.GetMethod()).FirstOrDefault(m => m?.DeclaringType?.FullName?.StartsWith("InterpMesh.", StringComparison.Ordinal) == true && m.DeclaringType.Namespace != "InterpMesh.Fuzz");
        var where = frame is null ? "?" : $"{frame.DeclaringType!.Name}.{frame.Name}";
        var sb = new StringBuilder(e.GetType().Name).Append(" in ").Append(where);
        if (e is InvariantViolationException)
            sb.Append(": ").Append(Digits().Replace(e.Message, "N"));
        return sb.ToString();
    }

    [GeneratedRegex("('[^']*'|\"[^\"]*\")")]
    private static partial Regex Quoted();

    // Scratch and temporary file paths differ per run; they must not make a refusal look new.
    [GeneratedRegex("(/[^/\\s:]+)+/?")]
    private static partial Regex FilePath();

    [GeneratedRegex("-?[0-9][0-9,.]*")]
    private static partial Regex Digits();

}
