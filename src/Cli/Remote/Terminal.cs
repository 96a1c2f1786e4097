using Spectre.Console;

namespace InterpMesh.Cli.Remote;

/// <summary>
/// Output for people and for programs: on a terminal, Spectre.Console draws the live progress bar
/// and the tables; on a pipe, a file or a test's writer (and always with <c>--json</c>, which does
/// not reach here) the output stays plain lines that scripts and logs can read.
/// </summary>
internal static class Terminal
{
    /// <summary>Whether <paramref name="writer"/> is the process's own stdout or stderr and that is a terminal.</summary>
    public static bool IsLive(TextWriter writer) =>
        (ReferenceEquals(writer, Console.Out) && !Console.IsOutputRedirected)
        || (ReferenceEquals(writer, Console.Error) && !Console.IsErrorRedirected);

    private static IAnsiConsole ConsoleFor(TextWriter writer) =>
        AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(writer) });

    /// <summary>
    /// Runs <paramref name="work"/>, showing its progress: a Spectre.Console bar on a terminal, else a
    /// plain line each time it passes another tenth (so logs stay short).
    /// </summary>
    public static T WithProgress<T>(TextWriter stderr, string label, Func<Action<double, string>, T> work)
    {
        if (!IsLive(stderr))
        {
            var plain = new ProgressLines(stderr, label);
            return work(plain.Update);
        }
        return ConsoleFor(stderr).Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(context =>
            {
                var task = context.AddTask(Markup.Escape(label.Trim().Length == 0 ? "job" : label.Trim()), maxValue: 1);
                var result = work((fraction, message) =>
                {
                    task.Value = Math.Clamp(fraction, 0, 1);
                    task.Description = Markup.Escape($"{label}{message}");
                });
                task.StopTask();
                return result;
            });
    }

    /// <summary>A table: Spectre.Console's on a terminal, else <paramref name="plain"/>'s lines.</summary>
    public static void Table(TextWriter stdout, string[] columns, IEnumerable<string[]> rows, Func<string[], string> plain)
    {
        if (!IsLive(stdout))
        {
            foreach (var row in rows)
                stdout.WriteLine(plain(row));
            return;
        }
        var table = new Table().Border(TableBorder.Rounded);
        foreach (var column in columns)
            table.AddColumn(Markup.Escape(column));
        foreach (var row in rows)
            table.AddRow([.. row.Select(Markup.Escape)]);
        ConsoleFor(stdout).Write(table);
    }

    /// <summary>The plain progress: one line per tenth passed.</summary>
    private sealed class ProgressLines(TextWriter stderr, string label)
    {
        private int lastTenth = -1;

        public void Update(double fraction, string message)
        {
            fraction = Math.Clamp(fraction, 0, 1);
            int tenth = (int)(fraction * 10);
            if (tenth == lastTenth)
                return;
            lastTenth = tenth;
            stderr.WriteLine($"{label}[{new string('#', (int)(fraction * 30)),-30}] {fraction,4:P0} {message}");
        }
    }
}
