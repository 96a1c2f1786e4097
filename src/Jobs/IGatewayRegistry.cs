namespace InterpMesh.Jobs;

/// <summary>
/// The gateways sharing one job store, so that limits meant for the whole deployment (a key's
/// request rate) can be divided among the replicas alive now. Each gateway stamps itself every few
/// seconds; one that stops says so, and one that dies drops out when its stamp grows old.
/// </summary>
public interface IGatewayRegistry
{
    /// <summary>
    /// Stamps <paramref name="gatewayId"/> as alive now and returns how many gateways (itself
    /// included) were stamped within <paramref name="freshWithin"/>.
    /// </summary>
    Task<int> HeartbeatGatewayAsync(string gatewayId, TimeSpan freshWithin, CancellationToken cancellationToken = default);

    /// <summary>Removes <paramref name="gatewayId"/> (it is stopping): the others count one fewer at their next heartbeat.</summary>
    Task LeaveGatewayAsync(string gatewayId, CancellationToken cancellationToken = default);
}
