namespace InterpMesh.Jobs;

/// <summary>Settings shared by both store implementations.</summary>
public sealed class JobStoreOptions
{
    /// <summary>Takes of one job before an expired lease fails it instead of re-queueing it (1 = never retried).</summary>
    public int MaxAttempts { get; init; } = 3;

    /// <summary>Running jobs per key, over every worker; a key at its limit is skipped at take time.</summary>
    public int MaxRunningPerOwner { get; init; } = 4;

    /// <summary>The clock for creation times and leases (tests move a manual one). Workers and gateways should run NTP.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;

    internal void Validate()
    {
        if (MaxAttempts < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxAttempts), MaxAttempts, "MaxAttempts must be at least 1 (one take, no retry)");
        if (MaxRunningPerOwner < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxRunningPerOwner), MaxRunningPerOwner, "MaxRunningPerOwner must be at least 1, or no job could ever run");
        ArgumentNullException.ThrowIfNull(Clock);
    }
}
