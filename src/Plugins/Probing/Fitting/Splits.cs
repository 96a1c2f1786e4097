namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>Stratified splits with a seed, so every class is in every part in proportion.</summary>
internal static class Splits
{
    /// <summary>Train/test index sets holding out about <paramref name="fraction"/> of each class.</summary>
    public static (int[] Train, int[] Test) Holdout(int[] labels, double fraction, int seed)
    {
        var rng = new Random(seed);
        var train = new List<int>();
        var test = new List<int>();
        foreach (var group in labels.Select((l, i) => (l, i)).GroupBy(p => p.l).OrderBy(g => g.Key))
        {
            var idx = group.Select(p => p.i).OrderBy(_ => rng.Next()).ToList();
            int held = Math.Clamp((int)Math.Round(idx.Count * fraction), 1, idx.Count - 1);
            test.AddRange(idx.Take(held));
            train.AddRange(idx.Skip(held));
        }
        return ([.. train.Order()], [.. test.Order()]);
    }

    /// <summary>k stratified folds: each example is in the test part of exactly one fold.</summary>
    public static List<(int[] Train, int[] Test)> KFold(int[] labels, int k, int seed)
    {
        var rng = new Random(seed);
        var fold = new int[labels.Length];
        foreach (var group in labels.Select((l, i) => (l, i)).GroupBy(p => p.l).OrderBy(g => g.Key))
        {
            int j = 0;
            foreach (var p in group.OrderBy(_ => rng.Next()))
                fold[p.i] = j++ % k;
        }
        return [.. Enumerable.Range(0, k).Select(f => (
            Enumerable.Range(0, labels.Length).Where(i => fold[i] != f).ToArray(),
            Enumerable.Range(0, labels.Length).Where(i => fold[i] == f).ToArray()))];
    }
}
