using System.CommandLine;

namespace InterpMesh.Bench.Harness;

/// <summary>
/// One benchmark: a command named <see cref="Name"/> with the options it takes (shared ones from
/// <see cref="SharedOptions"/> and its own); <see cref="BenchApp"/> adds <c>--threads</c> and
/// <c>--json</c>, parses, and prints what <see cref="Run"/> reports.
/// </summary>
internal abstract class Benchmark(string name, string description)
{
    private readonly List<Option> options = [];

    public string Name { get; } = name;

    public string Description { get; } = description;

    /// <summary>The options this benchmark reads, in the order its help lists them.</summary>
    public IReadOnlyList<Option> Options => options;

    /// <summary>Declares the options this benchmark reads.</summary>
    protected void Takes(params Option[] taken) => options.AddRange(taken);

    /// <summary>Runs the benchmark; what it returns is printed as text or JSON (<see cref="ReportPrinter"/>).</summary>
    public abstract BenchReport Run(BenchContext context);
}
