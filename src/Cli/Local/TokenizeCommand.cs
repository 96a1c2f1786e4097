using System.Text.Json;
using InterpMesh.Cli.CommandLine;
using InterpMesh.Runtime.Tokenization;

namespace InterpMesh.Cli.Local;

/// <summary><c>interpmesh tokenize</c>: one text, or a JSON-lines stream of texts.</summary>
internal static class TokenizeCommand
{
    public static int Run(CliArgs args, TextWriter stdout, TextReader stdin)
    {
        bool json = args.Flag("json");
        string? text = args.Text("text");
        Func<string, int[]> encode;
        LocalSession? session = null;
        try
        {
            if (args.Text("server") is { } server)
            {
                var target = Remote.RemoteModel.Target(server, args);
                encode = text => Remote.RemoteModel.Tokenize(target, text);
            }
            else if (args.Text("model") is not null)
            {
                session = LocalSession.Open(args);
                encode = session.Model.RequireTokenizer().Encode;
            }
            else
            {
                string path = args.Text("tokenizer") ?? throw new UsageException("tokenize needs --model PATH, --tokenizer PATH or --server URL");
                encode = TokenizerLoader.Load(Path.GetFullPath(path)).Encode;
            }
            args.RejectUnknown("tokenize");

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
