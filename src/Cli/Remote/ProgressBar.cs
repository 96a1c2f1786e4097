namespace InterpMesh.Cli.Remote;

/// <summary>
/// A job's progress on stderr: one bar redrawn in place on a terminal; on a pipe or a file, a line
/// each time the job passes another tenth (so logs stay short) and the last message.
/// </summary>
internal sealed class ProgressBar(TextWriter stderr, string label)
{
    private readonly bool live = ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected;
    private int lastTenth = -1;
    private int width;

    public void Update(double fraction, string message)
    {
        fraction = Math.Clamp(fraction, 0, 1);
        string line = $"{label}[{new string('#', (int)(fraction * 30)),-30}] {fraction,4:P0} {message}";
        if (live)
        {
            int max = Math.Max(20, SafeWindowWidth() - 1);
            if (line.Length > max)
                line = line[..max];
            stderr.Write("\r" + line.PadRight(width));
            width = line.Length;
            return;
        }
        int tenth = (int)(fraction * 10);
        if (tenth == lastTenth)
            return;
        lastTenth = tenth;
        stderr.WriteLine(line);
    }

    /// <summary>Ends the bar's line on a terminal.</summary>
    public void Done()
    {
        if (live && width > 0)
            stderr.WriteLine();
        width = 0;
    }

    private static int SafeWindowWidth()
    {
        try
        {
            return Console.WindowWidth > 0 ? Console.WindowWidth : 120;
        }
        catch (IOException)
        {
            return 120;
        }
    }
}
