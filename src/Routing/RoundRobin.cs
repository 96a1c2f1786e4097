namespace InterpMesh.Routing;

/// <summary>Turn-taking over items any of which may be set aside for a while (replicas, a name's addresses).</summary>
internal static class RoundRobin
{
    /// <summary>
    /// The next item in turn whose <paramref name="skipUntil"/> (an <see cref="Environment.TickCount64"/>)
    /// has passed; when every item is set aside, the next one in turn all the same (a call then
    /// finds out for itself, rather than nothing being tried).
    /// </summary>
    public static T Next<T>(T[] items, ref int next, Func<T, long> skipUntil)
    {
        long now = Environment.TickCount64;
        for (int i = 0; i < items.Length; i++)
        {
            var item = items[Turn(items.Length, ref next)];
            if (skipUntil(item) <= now)
                return item;
        }
        return items[Turn(items.Length, ref next)];
    }

    private static int Turn(int count, ref int next) => (int)((uint)Interlocked.Increment(ref next) % (uint)count);
}
