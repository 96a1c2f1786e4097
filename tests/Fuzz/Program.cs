using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using InterpMesh.Fuzz;

// interpmesh fuzz harness. Commands:
//   seed                          writes the generated seeds to tests/Fuzz/corpus/<target>/seed-*.bin
//   run [--seconds N] [--target T]... [--seed S]
//                                 mutates each target's corpus for N seconds (default 30); new
//                                 crashing inputs go to tests/Fuzz/crashes/<target>/, inputs that
//                                 reached a new refusal go to the corpus (a few per run)
//   replay FILE...                runs files through the target named by their folder
//   list                          lists the targets and their clean refusals
return args.Length == 0 ? Usage() : args[0] switch
{
    "seed" => Harness.Seed(),
    "run" => Harness.Run(args[1..]),
    "replay" => Harness.Replay(args[1..]),
    "list" => Harness.List(),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: InterpMesh.Fuzz seed | run [--seconds N] [--target T]... [--seed S] | replay FILE... | list");
    return 2;
}

internal static class Harness
{
    /// <summary>An execution longer than this is a hang: the input is saved and the process exits.</summary>
    private static readonly TimeSpan HangAfter = TimeSpan.FromSeconds(10);

    /// <summary>At most this many new corpus entries per target per run (the corpus is checked in).</summary>
    private const int MaxNewCorpusPerRun = 8;

    public static int List()
    {
        foreach (var t in Targets.All)
            Console.WriteLine($"{t.Name,-20} refuses with {t.Refusal}");
        return 0;
    }

    public static int Seed()
    {
        foreach (var (target, seeds) in Seeds.All())
        {
            var dir = RepoRoot.FuzzData("corpus", target);
            Directory.CreateDirectory(dir);
            foreach (var (name, bytes) in seeds)
            {
                var outcome = Targets.Get(target).Execute(bytes);
                File.WriteAllBytes(Path.Combine(dir, $"seed-{name}.bin"), bytes);
                Console.WriteLine($"{target}/seed-{name}.bin ({bytes.Length} bytes): {outcome.Verdict} {outcome.Signature}");
                if (outcome.Verdict != Verdict.Accepted)
                    Console.WriteLine($"  warning: a seed should be valid input; {outcome.Exception?.Message}");
            }
        }
        return 0;
    }

    public static int Replay(string[] files)
    {
        int bugs = 0;
        foreach (var file in files)
        {
            var target = Targets.Get(Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(file)))!);
            var outcome = target.Execute(File.ReadAllBytes(file));
            Console.WriteLine($"{file}: {outcome}");
            if (outcome.Verdict == Verdict.Bug)
                bugs++;
        }
        return bugs == 0 ? 0 : 1;
    }

    public static int Run(string[] args)
    {
        double seconds = 30;
        int seed = Environment.TickCount;
        bool showRefusals = false;
        var names = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--seconds": seconds = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--target": names.Add(args[++i]); break;
                case "--seed": seed = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--show-refusals": showRefusals = true; break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        var targets = names.Count == 0 ? Targets.All : names.Select(Targets.Get).ToList();
        int totalBugs = 0;
        Console.WriteLine($"{"target",-20} {"execs",9} {"exec/s",7} {"accepted",9} {"refused",9} {"refusal kinds",13} {"new corpus",10} {"crashes",7} {"new bug kinds",13}");
        foreach (var target in targets)
        {
            var stats = Fuzz(target, TimeSpan.FromSeconds(seconds), new Random(seed));
            totalBugs += stats.NewBugKinds;
            Console.WriteLine($"{target.Name,-20} {stats.Execs,9} {stats.Execs / seconds,7:F0} {stats.Accepted,9} {stats.Refused,9} {stats.RefusalKinds,13} {stats.NewCorpus,10} {stats.Crashes,7} {stats.NewBugKinds,13}");
            foreach (var b in stats.BugSignatures)
                Console.WriteLine($"    bug: {b}");
            if (showRefusals)
            {
                foreach (var r in stats.RefusalSignatures.Order(StringComparer.Ordinal).Take(200))
                    Console.WriteLine($"    refusal: {r}");
            }
        }
        return totalBugs == 0 ? 0 : 1;
    }

    private sealed record Stats(long Execs, long Accepted, long Refused, int RefusalKinds, int NewCorpus, long Crashes, int NewBugKinds, IReadOnlyList<string> BugSignatures, IReadOnlyCollection<string> RefusalSignatures);

    private static Stats Fuzz(FuzzTarget target, TimeSpan budget, Random rng)
    {
        var corpusDir = RepoRoot.FuzzData("corpus", target.Name);
        var crashDir = RepoRoot.FuzzData("crashes", target.Name);
        Directory.CreateDirectory(corpusDir);
        var corpus = Directory.EnumerateFiles(corpusDir).Order(StringComparer.Ordinal).Select(File.ReadAllBytes).ToList();
        if (corpus.Count == 0)
            corpus.Add([]);
        // Known crash signatures (already reported and checked in) are not saved again.
        var bugKinds = new HashSet<string>(StringComparer.Ordinal);
        if (Directory.Exists(crashDir))
        {
            foreach (var f in Directory.EnumerateFiles(crashDir))
            {
                var o = target.Execute(File.ReadAllBytes(f));
                if (o.Verdict == Verdict.Bug)
                    bugKinds.Add(o.Signature);
            }
        }
        var refusalKinds = new HashSet<string>(StringComparer.Ordinal);
        foreach (var input in corpus)
        {
            var o = target.Execute(input);
            refusalKinds.Add(o.Signature);
        }
        var mutator = new Mutator(rng);
        long execs = 0, accepted = 0, refused = 0, crashes = 0;
        int newCorpus = 0;
        var newBugs = new List<string>();

        // Watchdog: an input that runs past HangAfter is saved as a hang and the process exits
        // (a managed thread stuck in a loop cannot be stopped from outside).
        byte[] current = [];
        long started = 0;
        using var watchdog = new Timer(_ =>
        {
            long t0 = Interlocked.Read(ref started);
            if (t0 != 0 && Stopwatch.GetElapsedTime(t0) > HangAfter)
            {
                var path = Save(crashDir, "hang", Volatile.Read(ref current));
                Console.Error.WriteLine($"{target.Name}: an input ran for more than {HangAfter.TotalSeconds} s; saved as {path}");
                Environment.Exit(3);
            }
        }, null, 1000, 1000);

        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < budget)
        {
            var parent = corpus[rng.Next(corpus.Count)];
            var input = mutator.Mutate(parent, corpus[rng.Next(corpus.Count)]);
            Volatile.Write(ref current, input);
            Interlocked.Exchange(ref started, Stopwatch.GetTimestamp());
            var outcome = target.Execute(input);
            Interlocked.Exchange(ref started, 0);
            execs++;
            switch (outcome.Verdict)
            {
                case Verdict.Accepted:
                    accepted++;
                    break;
                case Verdict.Refused:
                    refused++;
                    // Poor man's coverage: a refusal never seen before reached a new check.
                    if (refusalKinds.Add(outcome.Signature))
                    {
                        corpus.Add(input);
                        if (newCorpus < MaxNewCorpusPerRun && input.Length <= 8192)
                        {
                            Save(corpusDir, "found", input);
                            newCorpus++;
                        }
                    }
                    break;
                default:
                    crashes++;
                    if (bugKinds.Add(outcome.Signature))
                    {
                        var path = Save(crashDir, "crash", input);
                        newBugs.Add($"{outcome.Signature} -> {Path.GetRelativePath(RepoRoot.Path, path)}: {outcome.Exception?.Message}");
                    }
                    break;
            }
        }
        return new Stats(execs, accepted, refused, refusalKinds.Count, newCorpus, crashes, newBugs.Count, newBugs, refusalKinds);
    }

    private static string Save(string dir, string kind, byte[] input)
    {
        Directory.CreateDirectory(dir);
        var name = $"{kind}-{Convert.ToHexStringLower(SHA256.HashData(input))[..16]}.bin";
        var path = Path.Combine(dir, name);
        File.WriteAllBytes(path, input);
        return path;
    }
}
