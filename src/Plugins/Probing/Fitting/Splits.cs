namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>
/// Train/test splits with a seed: stratified (every class in every part in proportion; the default),
/// or scikit-learn's <c>train_test_split(test_size, random_state)</c> without stratification,
/// reproduced index for index (<see cref="Shuffle"/>).
/// </summary>
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

    /// <summary>
    /// scikit-learn's <c>train_test_split(range(n), test_size=fraction, random_state=seed)</c> (its
    /// <c>ShuffleSplit</c>): the permutation <c>numpy.random.RandomState(seed).permutation(n)</c>,
    /// whose first ⌈fraction·n⌉ entries are the test part and the rest the training part, both in
    /// permutation order (as scikit-learn returns them).
    /// </summary>
    public static (int[] Train, int[] Test) Shuffle(int n, double fraction, uint seed)
    {
        var permutation = NumpyPermutation(n, seed);
        // scikit-learn: n_test = ceil(test_size · n_samples), n_train = n_samples − n_test.
        int nTest = (int)Math.Ceiling(fraction * n);
        return (permutation[nTest..], permutation[..nTest]);
    }

    /// <summary>
    /// <c>numpy.random.RandomState(seed).permutation(n)</c>: <c>arange(n)</c> shuffled by numpy's legacy
    /// Fisher–Yates (from the last element down, j drawn uniformly from [0, i] by masked rejection
    /// on 32-bit Mersenne Twister outputs).
    /// </summary>
    public static int[] NumpyPermutation(int n, uint seed)
    {
        var mt = new MersenneTwister(seed);
        var a = Enumerable.Range(0, n).ToArray();
        for (int i = n - 1; i >= 1; i--)
        {
            uint max = (uint)i, mask = max;
            mask |= mask >> 1;
            mask |= mask >> 2;
            mask |= mask >> 4;
            mask |= mask >> 8;
            mask |= mask >> 16;
            uint j;
            while ((j = mt.Next() & mask) > max)
            {
            }
            (a[i], a[(int)j]) = (a[(int)j], a[i]);
        }
        return a;
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

/// <summary>MT19937 (Matsumoto and Nishimura), seeded with <c>init_genrand</c> as numpy's legacy <c>RandomState(int)</c> is.</summary>
internal sealed class MersenneTwister
{
    private readonly uint[] state = new uint[624];
    private int index = 624;

    public MersenneTwister(uint seed)
    {
        state[0] = seed;
        for (int i = 1; i < 624; i++)
            state[i] = 1812433253u * (state[i - 1] ^ (state[i - 1] >> 30)) + (uint)i;
    }

    /// <summary>The next 32-bit output (<c>genrand_int32</c>).</summary>
    public uint Next()
    {
        if (index >= 624)
        {
            for (int i = 0; i < 624; i++)
            {
                uint y = (state[i] & 0x80000000u) | (state[(i + 1) % 624] & 0x7fffffffu);
                state[i] = state[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908b0dfu : 0u);
            }
            index = 0;
        }
        uint v = state[index++];
        v ^= v >> 11;
        v ^= (v << 7) & 0x9d2c5680u;
        v ^= (v << 15) & 0xefc60000u;
        v ^= v >> 18;
        return v;
    }
}
