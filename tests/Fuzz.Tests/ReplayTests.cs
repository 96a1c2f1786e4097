using InterpMesh.Fuzz;

namespace InterpMesh.Fuzz.Tests;

/// <summary>
/// Every input the fuzzer ever saved — crash reproducers (bugs since fixed) and the corpus (seeds
/// and inputs that reached new checks) — goes through its target again: each must be accepted or
/// refused with the parser's documented exception.
/// </summary>
public sealed class ReplayTests
{
    public static TheoryData<string, string> Crashes() => Files("crashes");

    public static TheoryData<string, string> Corpus() => Files("corpus");

    private static TheoryData<string, string> Files(string kind)
    {
        var data = new TheoryData<string, string>();
        foreach (var target in Targets.All)
        {
            var dir = RepoRoot.FuzzData(kind, target.Name);
            if (!Directory.Exists(dir))
                continue;
            foreach (var file in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
                data.Add(target.Name, Path.GetFileName(file));
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Crashes))]
    public void Crash_reproducer_is_now_accepted_or_refused_cleanly(string target, string file)
    {
        var outcome = Targets.Get(target).Execute(File.ReadAllBytes(Path.Combine(RepoRoot.FuzzData("crashes", target), file)));
        Assert.True(outcome.Verdict != Verdict.Bug, outcome.ToString());
    }

    [Theory]
    [MemberData(nameof(Corpus))]
    public void Corpus_input_is_accepted_or_refused_cleanly(string target, string file)
    {
        var outcome = Targets.Get(target).Execute(File.ReadAllBytes(Path.Combine(RepoRoot.FuzzData("corpus", target), file)));
        Assert.True(outcome.Verdict != Verdict.Bug, outcome.ToString());
    }

    [Fact]
    public void Every_target_has_seeds_and_every_seed_is_accepted()
    {
        var seeds = Seeds.All();
        Assert.Equal(Targets.All.Select(t => t.Name).Order(), seeds.Keys.Order());
        foreach (var (target, inputs) in seeds)
        {
            Assert.NotEmpty(inputs);
            foreach (var (name, bytes) in inputs)
            {
                var outcome = Targets.Get(target).Execute(bytes);
                Assert.True(outcome.Verdict == Verdict.Accepted, $"{target}/{name}: {outcome}");
                // The checked-in corpus starts from exactly these seeds.
                var file = Path.Combine(RepoRoot.FuzzData("corpus", target), $"seed-{name}.bin");
                Assert.True(File.Exists(file) && File.ReadAllBytes(file).SequenceEqual(bytes), $"{file} is missing or stale; run the harness's seed command");
            }
        }
    }

    [Fact]
    public void The_harness_reports_an_undocumented_exception_as_a_bug()
    {
        // The classification the whole suite relies on must be able to fail.
        var target = new FuzzTarget("probe", "FormatException", bytes => _ = bytes[bytes.Length], e => e is FormatException);
        var outcome = target.Execute([1, 2]);
        Assert.Equal(Verdict.Bug, outcome.Verdict);
        Assert.StartsWith("IndexOutOfRangeException", outcome.Signature, StringComparison.Ordinal);
        var greedy = new FuzzTarget("greedy", "none", bytes => GC.KeepAlive(new byte[FuzzTarget.AllocationLimit(bytes.Length) + 1]), _ => false);
        Assert.Equal(Verdict.Bug, greedy.Execute([]).Verdict);
        var refusing = new FuzzTarget("refusing", "FormatException", _ => throw new FormatException("no"), e => e is FormatException);
        Assert.Equal(Verdict.Refused, refusing.Execute([]).Verdict);
    }
}
