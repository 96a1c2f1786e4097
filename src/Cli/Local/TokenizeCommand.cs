using System.CommandLine;
using System.Text.Json;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Cli.Local;

/// <summary><c>interpmesh tokenize</c>: one text, or a JSON-lines stream of texts.</summary>
internal static class TokenizeCommand
{
    public static Command Create(CliConsole console)
    {
        var options = new ModelOptions();
        var text = CliOptions.Text("--text", "the text (without it: one JSON string per line on stdin)", "TEXT");
        var command = options.AddTo(new Command("tokenize", "Token ids of a text (or of JSON strings on stdin).") { text }, tokenizerSuffices: true);
        command.SetAction(r => Run(options, r.GetValue(text), r, console));
        return command;
    }

    private static int Run(ModelOptions options, string? text, ParseResult args, CliConsole console)
    {
        var (stdout, stdin) = (console.Out, console.In);
        bool json = args.GetValue(options.Json);
        Func<string, int[]> encode;
        LocalSession? session = null;
        try
        {
            if (options.Remote(args) is { } target)
                encode = item => Remote.RemoteModel.Tokenize(target, item);
            else if (args.Given(options.Model))
            {
                session = options.Open(args);
                encode = session.Model.RequireTokenizer().Encode;
            }
            else
                encode = TokenizerLoader.Load(Path.GetFullPath(args.GetRequiredValue(options.Tokenizer))).Encode;

            if (text is not null)
            {
                Write(stdout, encode(text), json);
                return 0;
            }
            // One JSON string per input line, one result per output line: a corpus in one process.
            int lineNumber = 0;
            while (stdin.ReadLine() is { } line)
            {
                lineNumber++;
                if (line.Length == 0)
                    continue;
                string? item;
                try
                {
                    item = JsonSerializer.Deserialize<string>(line);
                }
                catch (JsonException)
                {
                    item = null;
                }
                if (item is null)
                    throw new UsageException($"stdin line {lineNumber} is not a JSON string; give one JSON string per line, e.g. \"Once upon a time\"");
                Write(stdout, encode(item), json: true);
            }
            return 0;
        }
        finally
        {
            session?.Dispose();
        }
    }

    private static void Write(TextWriter stdout, int[] ids, bool json)
    {
        if (json)
            JsonOutput.Write(stdout, new Dictionary<string, int[]> { ["ids"] = ids });
        else
            stdout.WriteLine(string.Join(' ', ids));
    }
}
