namespace InterpMesh.Gateway.Security;

/// <summary>
/// How many gateways share the deployment's per-key limits now (at least 1), as the job store
/// last counted them (<see cref="Hosting.GatewayPresence"/>). Each replica enforces its share of a
/// key's rate and burst, so the replicas together allow what the configuration says, however many
/// there are.
/// </summary>
public sealed class ReplicaShare
{
    private int replicas = 1;

    /// <summary>Live gateways sharing the store, this one included.</summary>
    public int Replicas => Volatile.Read(ref replicas);

    /// <summary>Sets the count (values below 1 count as 1).</summary>
    public void Update(int count) => Volatile.Write(ref replicas, Math.Max(1, count));

    /// <summary>This replica's part of a deployment-wide sustained rate.</summary>
    public static double RateOf(double total, int replicas) => total / Math.Max(1, replicas);

    /// <summary>This replica's part of a deployment-wide burst: at least one call, the parts summing to no more than the total where it can.</summary>
    public static int BurstOf(int total, int replicas) => Math.Max(1, total / Math.Max(1, replicas));
}
