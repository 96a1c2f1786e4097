using System.Data;
using System.Data.Common;
using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json;

namespace InterpMesh.Jobs;

/// <summary>
/// The job store's semantics in SQL, shared by <see cref="PostgresJobStore"/> and
/// <see cref="SqliteJobStore"/>: each supplies connections, write transactions and its row-locking
/// clauses. PostgreSQL runs concurrent writers under READ COMMITTED with <c>FOR UPDATE [SKIP
/// LOCKED]</c>; SQLite runs one writer at a time (<c>BEGIN IMMEDIATE</c>), so it needs no locking
/// clauses. Times are Unix milliseconds from <see cref="JobStoreOptions.Clock"/>.
/// </summary>
public abstract class SqlJobStore : IJobStore, IJobQueue, IPluginRegistry, IGatewayRegistry, IAsyncDisposable
{
    private const string Columns =
        "id, owner, plugin, model, parameters_json, timeout_seconds, trace_parent, state, created_ms, started_ms, finished_ms, " +
        "progress, message, error, error_code, result_json, attempts, worker_id, lease_expires_ms, cancel_requested, cancelled_by, event_seq, " +
        "model_calls, tokens, model_ms";

    private const int ColumnCount = 25;

    private const string Final = "('succeeded', 'failed', 'cancelled')";

    private static readonly TimeSpan MaxLease = TimeSpan.FromDays(1);

    protected SqlJobStore(JobStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
    }

    public JobStoreOptions Options { get; }

    /// <summary>"Postgres" or "Sqlite": the folder of this dialect's migrations.</summary>
    protected abstract string MigrationFolder { get; }

    /// <summary>Appended to a SELECT whose rows the transaction will change: " FOR UPDATE" where rows lock.</summary>
    protected abstract string ForUpdate { get; }

    /// <summary>As <see cref="ForUpdate"/>, but rows another transaction holds are skipped (the queue's take).</summary>
    protected abstract string ForUpdateSkipLocked { get; }

    protected abstract Task<DbConnection> OpenConnectionAsync(CancellationToken cancellationToken);

    /// <summary>A connection with an open write transaction; disposing it rolls back unless committed.</summary>
    protected abstract Task<WriteScope> BeginWriteAsync(CancellationToken cancellationToken);

    /// <summary>Serialises migrations between processes starting at once (inside the migration's transaction).</summary>
    protected abstract Task LockSchemaAsync(WriteScope write, CancellationToken cancellationToken);

    public abstract ValueTask DisposeAsync();

    private long Now() => Options.Clock.GetUtcNow().ToUnixTimeMilliseconds();

    // ---- schema -------------------------------------------------------------------------------

    /// <summary>The migrations this build carries for this dialect, by version.</summary>
    public IReadOnlyList<(int Version, string Name, string Sql)> Migrations()
    {
        var assembly = typeof(SqlJobStore).Assembly;
        string prefix = $"InterpMesh.Jobs.Migrations.{MigrationFolder}/";
        var found = new List<(int, string, string)>();
        foreach (var resource in assembly.GetManifestResourceNames().Where(r => r.StartsWith(prefix, StringComparison.Ordinal)))
        {
            string file = resource[prefix.Length..];
            int underscore = file.IndexOf('_', StringComparison.Ordinal);
            if (underscore <= 0 || !int.TryParse(file[..underscore], NumberStyles.None, CultureInfo.InvariantCulture, out int version) || !file.EndsWith(".sql", StringComparison.Ordinal))
                throw new InvalidDataException($"migration '{file}' is not named NNNN_name.sql");
            using var stream = assembly.GetManifestResourceStream(resource)!;
            using var reader = new StreamReader(stream, Encoding.UTF8);
            found.Add((version, file[(underscore + 1)..^4], reader.ReadToEnd()));
        }
        found.Sort((a, b) => a.Item1.CompareTo(b.Item1));
        for (int i = 0; i < found.Count; i++)
        {
            if (found[i].Item1 != i + 1)
                throw new InvalidDataException($"{MigrationFolder} migrations must be numbered 1, 2, … without gaps; found {string.Join(", ", found.Select(f => f.Item1))}");
        }
        return found;
    }

    /// <summary>
    /// Applies the migrations the database lacks, in order, in one transaction, recording each in
    /// <c>interpmesh_schema_version</c>; refuses a database whose schema is newer than this build.
    /// Returns the versions applied.
    /// </summary>
    public async Task<IReadOnlyList<int>> MigrateAsync(CancellationToken cancellationToken = default)
    {
        var migrations = Migrations();
        await using var write = await BeginWriteAsync(cancellationToken);
        await LockSchemaAsync(write, cancellationToken);
        await ExecuteAsync(write, "CREATE TABLE IF NOT EXISTS interpmesh_schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_ms bigint NOT NULL)", cancellationToken);
        long current = await ScalarLongAsync(write, "SELECT COALESCE(MAX(version), 0) FROM interpmesh_schema_version", cancellationToken);
        if (current > migrations.Count)
            throw new JobStoreException(JobStoreError.Unavailable,
                $"the job database's schema is at version {current}, newer than this build knows ({migrations.Count}); run a newer InterpMesh against it or point this one at another database");
        var applied = new List<int>();
        foreach (var (version, name, sql) in migrations.Where(m => m.Version > current))
        {
            await ExecuteAsync(write, sql, cancellationToken);
            await ExecuteAsync(write, "INSERT INTO interpmesh_schema_version (version, name, applied_ms) VALUES (@v, @n, @t)", cancellationToken, ("v", version), ("n", name), ("t", Now()));
            applied.Add(version);
        }
        await write.CommitAsync(cancellationToken);
        return applied;
    }

    /// <summary>The schema version the database is at.</summary>
    public async Task<int> SchemaVersionAsync(CancellationToken cancellationToken = default)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null, "SELECT COALESCE(MAX(version), 0) FROM interpmesh_schema_version");
        return Convert.ToInt32(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
    }

    // ---- IJobStore ----------------------------------------------------------------------------

    public async Task<JobInfo> SubmitAsync(NewJob job, SubmitLimits? limits = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(job);
        Validate(job);
        limits ??= new SubmitLimits();
        if (limits.MaxActivePerOwner < 0 || limits.MaxQueued < 0)
            throw Invalid($"submission limits must be 0 (none) or positive, not {limits.MaxActivePerOwner} per key and {limits.MaxQueued} queued");
        long now = Now();
        string id = "job-" + Guid.NewGuid().ToString("N")[..16];
        await using var write = await BeginWriteAsync(cancellationToken);
        await ExecuteAsync(write, "INSERT INTO job_owners (owner, last_take) VALUES (@o, 0) ON CONFLICT (owner) DO NOTHING", cancellationToken, ("o", job.Owner));
        // The key's row is its mutex: concurrent submissions of one key count one after the other.
        await ExecuteAsync(write, "SELECT owner FROM job_owners WHERE owner = @o" + ForUpdate, cancellationToken, ("o", job.Owner));
        if (limits.MaxActivePerOwner > 0)
        {
            long active = await ScalarLongAsync(write, "SELECT COUNT(*) FROM jobs WHERE owner = @o AND state IN ('queued', 'running')", cancellationToken, ("o", job.Owner));
            if (active >= limits.MaxActivePerOwner)
                throw new JobStoreException(JobStoreError.ResourceExhausted,
                    $"key '{job.Owner}' already has {active} jobs queued or running (limit {limits.MaxActivePerOwner}); wait for one to finish or cancel one");
        }
        if (limits.MaxQueued > 0)
        {
            long queued = await ScalarLongAsync(write, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'", cancellationToken);
            if (queued >= limits.MaxQueued)
                throw new JobStoreException(JobStoreError.ResourceExhausted, $"the job queue is full ({queued} waiting); retry later (limit {limits.MaxQueued} over all keys)") { WorthRetrying = true };
        }
        await ExecuteAsync(write, "UPDATE job_owners SET jobs_submitted = jobs_submitted + 1 WHERE owner = @o", cancellationToken, ("o", job.Owner));
        await ExecuteAsync(write,
            "INSERT INTO jobs (id, owner, plugin, model, parameters_json, timeout_seconds, trace_parent, state, created_ms, message) " +
            "VALUES (@id, @owner, @plugin, @model, @parameters, @timeout, @trace, 'queued', @now, 'queued')", cancellationToken,
            ("id", id), ("owner", job.Owner), ("plugin", job.Plugin), ("model", job.Model), ("parameters", job.ParametersJson),
            ("timeout", job.TimeoutSeconds), ("trace", job.TraceParent ?? ""), ("now", now));
        await AppendEventAsync(write, id, JobEventKind.State, JobState.Queued, 0, "queued", now, cancellationToken);
        var stored = (await ReadJobAsync(write, id, lockRow: false, cancellationToken))!;
        await write.CommitAsync(cancellationToken);
        return stored;
    }

    /// <summary>
    /// Stores a job that already ended elsewhere (a record of an older gateway's per-pod files), with
    /// its times, error and result, and one state event saying where it came from. Not a submission:
    /// no quota is checked and nothing is queued. False, and nothing written, if a job with its id exists.
    /// </summary>
    public async Task<bool> ImportFinishedAsync(JobInfo job, string origin, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(job);
        RequireId(job.Id);
        Validate(new NewJob(job.Owner, job.Plugin, job.Model, job.ParametersJson, job.TimeoutSeconds, job.TraceParent));
        if (!job.IsFinal)
            throw Invalid($"only a final job can be imported; '{job.Id}' is {JobStates.ToStored(job.State)}");
        if (string.IsNullOrWhiteSpace(origin))
            throw Invalid("an imported job needs its origin (it becomes the job's event)");
        long finished = (job.Finished ?? job.Created).ToUnixTimeMilliseconds();
        await using var write = await BeginWriteAsync(cancellationToken);
        if (await ScalarAsync(write, "SELECT id FROM jobs WHERE id = @id", cancellationToken, ("id", job.Id)) is string)
            return false;
        await ExecuteAsync(write, "INSERT INTO job_owners (owner, last_take) VALUES (@o, 0) ON CONFLICT (owner) DO NOTHING", cancellationToken, ("o", job.Owner));
        await ExecuteAsync(write,
            "INSERT INTO jobs (id, owner, plugin, model, parameters_json, timeout_seconds, trace_parent, state, created_ms, started_ms, finished_ms, progress, message, error, error_code, result_json, attempts) " +
            "VALUES (@id, @owner, @plugin, @model, @parameters, @timeout, @trace, @state, @created, @started, @finished, @progress, @message, @error, @code, @result, @attempts)", cancellationToken,
            ("id", job.Id), ("owner", job.Owner), ("plugin", job.Plugin), ("model", job.Model), ("parameters", job.ParametersJson), ("timeout", job.TimeoutSeconds),
            ("trace", job.TraceParent ?? ""), ("state", JobStates.ToStored(job.State)), ("created", job.Created.ToUnixTimeMilliseconds()),
            ("started", job.Started?.ToUnixTimeMilliseconds()), ("finished", finished), ("progress", job.Progress), ("message", job.Message ?? ""),
            ("error", job.Error ?? ""), ("code", job.ErrorCode ?? ""), ("result", job.ResultJson), ("attempts", job.Attempts));
        await AppendEventAsync(write, job.Id, JobEventKind.State, job.State, job.Progress, origin, finished, cancellationToken);
        await write.CommitAsync(cancellationToken);
        return true;
    }

    public async Task<JobInfo> GetAsync(string id, JobCaller caller, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(caller);
        RequireId(id);
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null, $"SELECT {Columns} FROM jobs WHERE id = @id", ("id", id));
        var job = await ReadJobsAsync(command, cancellationToken);
        return Visible(job.Count == 0 ? null : job[0], id, caller, "read");
    }

    public async Task<JobPage> ListAsync(JobListQuery query, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentNullException.ThrowIfNull(query.Caller);
        if (query.PageSize < 0 || query.PageSize > JobStoreLimits.MaxPageSize)
            throw Invalid($"page_size must be between 0 (default {JobStoreLimits.DefaultPageSize}) and {JobStoreLimits.MaxPageSize}, not {query.PageSize}");
        string owner = query.Owner ?? "";
        if (!query.Caller.IsAdmin)
        {
            if (owner.Length > 0 && owner != query.Caller.Name)
                throw new JobStoreException(JobStoreError.PermissionDenied, $"key '{query.Caller.Name}' may list only its own jobs; only an admin may list key '{owner}''s");
            owner = query.Caller.Name;
        }
        int size = query.PageSize == 0 ? JobStoreLimits.DefaultPageSize : query.PageSize;
        long before = PageToken.Decode(query.PageToken ?? "");
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null,
            $"SELECT {Columns}, seq FROM jobs WHERE seq < @before AND (@owner = '' OR owner = @owner) AND (@plugin = '' OR plugin = @plugin) ORDER BY seq DESC LIMIT @n",
            ("before", before), ("owner", owner), ("plugin", query.Plugin ?? ""), ("n", size + 1));
        var jobs = new List<JobInfo>();
        long lastSeq = 0;
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                if (jobs.Count == size)
                    return new JobPage(jobs, PageToken.Encode(lastSeq));
                jobs.Add(ReadJob(reader));
                lastSeq = Long(reader, ColumnCount);
            }
        }
        return new JobPage(jobs, "");
    }

    public async Task<IReadOnlyList<JobEventRecord>> ReadEventsAsync(string id, JobCaller caller, long afterSequence, int max = JobStoreLimits.MaxEventsPerRead, CancellationToken cancellationToken = default)
    {
        if (afterSequence < 0)
            throw Invalid($"the event sequence to read after must be 0 (from the first event) or more, not {afterSequence}");
        if (max < 1 || max > JobStoreLimits.MaxEventsPerRead)
            throw Invalid($"events are read 1 to {JobStoreLimits.MaxEventsPerRead} at a time, not {max}");
        await GetAsync(id, caller, cancellationToken);
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null,
            "SELECT seq, time_ms, kind, state, progress, message FROM job_events WHERE job_id = @id AND seq > @after ORDER BY seq LIMIT @n",
            ("id", id), ("after", afterSequence), ("n", max));
        var events = new List<JobEventRecord>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            events.Add(new JobEventRecord(id, Long(reader, 0), DateTimeOffset.FromUnixTimeMilliseconds(Long(reader, 1)),
                KindFromStored(reader.GetString(2)), JobStates.FromStored(reader.GetString(3)), reader.GetDouble(4), reader.GetString(5)));
        }
        return events;
    }

    public async Task<JobInfo> CancelAsync(string id, JobCaller caller, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(caller);
        RequireId(id);
        long now = Now();
        await using var write = await BeginWriteAsync(cancellationToken);
        var job = Visible(await ReadJobAsync(write, id, lockRow: true, cancellationToken), id, caller, "cancel");
        if (job.State == JobState.Queued)
        {
            string error = $"cancelled by {caller.Name} while it was queued";
            await ExecuteAsync(write,
                "UPDATE jobs SET state = 'cancelled', finished_ms = @now, message = 'cancelled', error = @error, error_code = 'CANCELLED', cancel_requested = 1, cancelled_by = @by WHERE id = @id",
                cancellationToken, ("now", now), ("error", error), ("by", caller.Name), ("id", id));
            await AppendEventAsync(write, id, JobEventKind.State, JobState.Cancelled, job.Progress, error, now, cancellationToken);
        }
        else if (job.State == JobState.Running && !job.CancelRequested)
        {
            await ExecuteAsync(write, "UPDATE jobs SET cancel_requested = 1, cancelled_by = @by WHERE id = @id", cancellationToken, ("by", caller.Name), ("id", id));
            await AppendEventAsync(write, id, JobEventKind.Log, JobState.Running, job.Progress, $"cancellation requested by {caller.Name}", now, cancellationToken);
        }
        var after = (await ReadJobAsync(write, id, lockRow: false, cancellationToken))!;
        await write.CommitAsync(cancellationToken);
        return after;
    }

    public async Task<int> PruneAsync(DateTimeOffset finishedBefore, int keepNewest, CancellationToken cancellationToken = default)
    {
        if (keepNewest < 0)
            throw Invalid($"the number of finished jobs to keep must be 0 or more, not {keepNewest}");
        const string Prunable =
            $"state IN {Final} AND (finished_ms < @cutoff OR seq NOT IN (SELECT seq FROM jobs WHERE state IN {Final} ORDER BY finished_ms DESC, seq DESC LIMIT @keep))";
        (string, object?)[] args = [("cutoff", finishedBefore.ToUnixTimeMilliseconds()), ("keep", keepNewest)];
        await using var write = await BeginWriteAsync(cancellationToken);
        await ExecuteAsync(write, $"DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE {Prunable})", cancellationToken, args);
        int deleted = await ExecuteAsync(write, $"DELETE FROM jobs WHERE {Prunable}", cancellationToken, args);
        await write.CommitAsync(cancellationToken);
        return deleted;
    }

    public async Task SetRunningLimitAsync(string owner, int? maxRunning, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(owner))
            throw Invalid("a running limit needs the key's name");
        if (maxRunning < 1)
            throw Invalid($"a key's running limit must be at least 1 (or null for the default {Options.MaxRunningPerOwner}), not {maxRunning}");
        await using var write = await BeginWriteAsync(cancellationToken);
        await ExecuteAsync(write, "INSERT INTO job_owners (owner, last_take) VALUES (@o, 0) ON CONFLICT (owner) DO NOTHING", cancellationToken, ("o", owner));
        await ExecuteAsync(write, "UPDATE job_owners SET max_running = @m WHERE owner = @o", cancellationToken, ("m", maxRunning), ("o", owner));
        await write.CommitAsync(cancellationToken);
    }

    public async Task<IReadOnlyList<KeyUsage>> UsageAsync(CancellationToken cancellationToken = default)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null, "SELECT owner, jobs_submitted, model_calls, tokens, model_ms FROM job_owners ORDER BY owner");
        var usage = new List<KeyUsage>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
            usage.Add(new KeyUsage(reader.GetString(0), Long(reader, 1), new JobUsage(Long(reader, 2), Long(reader, 3), TimeSpan.FromMilliseconds(Long(reader, 4)))));
        return usage;
    }

    public async Task<JobCounts> CountAsync(CancellationToken cancellationToken = default)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null, "SELECT state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY state");
        long queued = 0, running = 0;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            if (reader.GetString(0) == "queued")
                queued = Long(reader, 1);
            else
                running = Long(reader, 1);
        }
        return new JobCounts(queued, running);
    }

    // ---- IPluginRegistry -----------------------------------------------------------------------

    public async Task PublishPluginsAsync(string workerId, IReadOnlyList<PublishedPlugin> plugins, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(workerId))
            throw Invalid("a worker id is required to publish plugins (readers tell workers apart by it)");
        ArgumentNullException.ThrowIfNull(plugins);
        foreach (var group in plugins.GroupBy(p => p.Id, StringComparer.Ordinal).Where(g => g.Count() > 1))
            throw Invalid($"plugin '{group.Key}' is published twice by worker '{workerId}'; a worker publishes each plugin id once");
        foreach (var p in plugins)
        {
            if (string.IsNullOrWhiteSpace(p.Id))
                throw Invalid($"worker '{workerId}' published a plugin without an id");
            if (p.Loaded && string.IsNullOrEmpty(p.ManifestJson))
                throw Invalid($"plugin '{p.Id}' is published as loaded without its manifest");
        }
        long now = Now();
        await using var write = await BeginWriteAsync(cancellationToken);
        await ExecuteAsync(write, "DELETE FROM plugins WHERE worker_id = @w", cancellationToken, ("w", workerId));
        foreach (var p in plugins)
        {
            await ExecuteAsync(write,
                "INSERT INTO plugins (worker_id, plugin_id, folder, loaded, error, manifest_json, updated_ms) VALUES (@w, @id, @folder, @loaded, @error, @manifest, @now)",
                cancellationToken, ("w", workerId), ("id", p.Id), ("folder", p.Folder ?? ""), ("loaded", p.Loaded), ("error", p.Error), ("manifest", p.ManifestJson), ("now", now));
        }
        await write.CommitAsync(cancellationToken);
    }

    public async Task<IReadOnlyList<PluginRecord>> ListPluginsAsync(TimeSpan freshWithin, CancellationToken cancellationToken = default)
    {
        if (freshWithin <= TimeSpan.Zero)
            throw Invalid($"plugins are listed from workers seen within a positive time, not {freshWithin}");
        long since = Now() - (long)freshWithin.TotalMilliseconds;
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, null,
            "SELECT plugin_id, folder, loaded, error, manifest_json, worker_id, updated_ms FROM plugins WHERE updated_ms >= @since ORDER BY plugin_id, updated_ms DESC, worker_id",
            ("since", since));
        var rows = new List<PluginRecord>();
        await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                rows.Add(new PluginRecord(reader.GetString(0), reader.GetString(1), Long(reader, 2) != 0,
                    reader.IsDBNull(3) ? null : reader.GetString(3), reader.IsDBNull(4) ? null : reader.GetString(4),
                    reader.GetString(5), DateTimeOffset.FromUnixTimeMilliseconds(Long(reader, 6))));
            }
        }
        // Rows come newest first within an id: the first loaded one, else the newest.
        return [.. rows.GroupBy(r => r.Id, StringComparer.Ordinal).Select(g => g.FirstOrDefault(r => r.Loaded) ?? g.First())];
    }

    // ---- IGatewayRegistry ----------------------------------------------------------------------

    public async Task<int> HeartbeatGatewayAsync(string gatewayId, TimeSpan freshWithin, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(gatewayId))
            throw Invalid("a gateway id is required to stamp a gateway (replicas are counted by it)");
        if (freshWithin <= TimeSpan.Zero)
            throw Invalid($"gateways are counted over a positive time, not {freshWithin}");
        long now = Now(), since = now - (long)freshWithin.TotalMilliseconds;
        await using var write = await BeginWriteAsync(cancellationToken);
        await ExecuteAsync(write,
            "INSERT INTO gateways (gateway_id, seen_ms) VALUES (@g, @now) ON CONFLICT (gateway_id) DO UPDATE SET seen_ms = excluded.seen_ms",
            cancellationToken, ("g", gatewayId), ("now", now));
        // Rows of gateways long gone only take space.
        await ExecuteAsync(write, "DELETE FROM gateways WHERE seen_ms < @old", cancellationToken, ("old", now - (long)TimeSpan.FromDays(1).TotalMilliseconds));
        long count = await ScalarLongAsync(write, "SELECT COUNT(*) FROM gateways WHERE seen_ms >= @since", cancellationToken, ("since", since));
        await write.CommitAsync(cancellationToken);
        return (int)Math.Max(1, count);
    }

    public async Task LeaveGatewayAsync(string gatewayId, CancellationToken cancellationToken = default)
    {
        await using var write = await BeginWriteAsync(cancellationToken);
        await ExecuteAsync(write, "DELETE FROM gateways WHERE gateway_id = @g", cancellationToken, ("g", gatewayId));
        await write.CommitAsync(cancellationToken);
    }

    // ---- IJobQueue ----------------------------------------------------------------------------

    public async Task<JobLease?> TakeAsync(string workerId, TimeSpan leaseDuration, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(workerId))
            throw Invalid("a worker id is required to take a job (it is recorded with the lease)");
        if (leaseDuration <= TimeSpan.Zero || leaseDuration > MaxLease)
            throw Invalid($"a lease lasts more than 0 and at most {MaxLease.TotalHours:0} hours, not {leaseDuration}");
        await RequeueExpiredAsync(cancellationToken);

        await using var write = await BeginWriteAsync(cancellationToken);
        var passed = new List<string>();
        while (true)
        {
            // The key served least recently among those with queued jobs and a free running slot.
            // Its row is locked (skipping keys another taker holds), then its running jobs are
            // counted again: the first count may predate a take that committed meanwhile.
            var sql = new StringBuilder(
                "SELECT o.owner FROM job_owners o WHERE EXISTS (SELECT 1 FROM jobs q WHERE q.owner = o.owner AND q.state = 'queued') " +
                "AND (SELECT COUNT(*) FROM jobs r WHERE r.owner = o.owner AND r.state = 'running') < COALESCE(o.max_running, @limit)");
            var args = new List<(string, object?)> { ("limit", Options.MaxRunningPerOwner) };
            for (int i = 0; i < passed.Count; i++)
            {
                sql.Append(CultureInfo.InvariantCulture, $" AND o.owner <> @p{i}");
                args.Add(($"p{i}", passed[i]));
            }
            sql.Append(" ORDER BY o.last_take, o.owner LIMIT 1");
            object? found = await ScalarAsync(write, sql + ForUpdateSkipLocked, cancellationToken, [.. args]);
            // Every key with work skipped because another transaction holds its row (a take or a
            // submission of that key, held for a few statements): wait for it rather than report an
            // empty queue, which would idle this taker for a whole poll interval while jobs wait —
            // with one busy key, most concurrent takes. Only while this take holds no key's row
            // itself, so two waiting takes can never wait on each other.
            if (found is null && passed.Count == 0 && ForUpdate != ForUpdateSkipLocked)
                found = await ScalarAsync(write, sql + ForUpdate, cancellationToken, [.. args]);
            if (found is not string owner)
            {
                await write.CommitAsync(cancellationToken);
                return null;
            }
            passed.Add(owner);
            long headroom = await ScalarLongAsync(write,
                "SELECT COALESCE(max_running, @limit) - (SELECT COUNT(*) FROM jobs WHERE owner = @o AND state = 'running') FROM job_owners WHERE owner = @o",
                cancellationToken, ("limit", Options.MaxRunningPerOwner), ("o", owner));
            if (headroom <= 0)
                continue;
            long seq, attempts;
            await using (var pick = Command(write.Connection, write.Transaction,
                "SELECT seq, attempts FROM jobs WHERE owner = @o AND state = 'queued' ORDER BY seq LIMIT 1" + ForUpdateSkipLocked, ("o", owner)))
            await using (var reader = await pick.ExecuteReaderAsync(cancellationToken))
            {
                if (!await reader.ReadAsync(cancellationToken))
                    continue;
                seq = Long(reader, 0);
                attempts = Long(reader, 1) + 1;
            }
            long now = Now();
            string token = Guid.NewGuid().ToString("N");
            string message = $"running on {workerId} (attempt {attempts} of {Options.MaxAttempts})";
            await ExecuteAsync(write,
                "UPDATE jobs SET state = 'running', attempts = @attempts, worker_id = @worker, lease_token = @token, lease_expires_ms = @expires, lease_ms = @lease, " +
                "started_ms = COALESCE(started_ms, @now), message = @message WHERE seq = @seq", cancellationToken,
                ("attempts", (int)attempts), ("worker", workerId), ("token", token), ("expires", now + (long)leaseDuration.TotalMilliseconds),
                ("lease", (long)leaseDuration.TotalMilliseconds), ("now", now), ("message", message), ("seq", seq));
            await ExecuteAsync(write, "UPDATE job_owners SET last_take = (SELECT COALESCE(MAX(last_take), 0) + 1 FROM job_owners) WHERE owner = @o", cancellationToken, ("o", owner));
            var job = (await ReadJobBySeqAsync(write, seq, cancellationToken))!;
            await AppendEventAsync(write, job.Id, JobEventKind.State, JobState.Running, job.Progress, message, now, cancellationToken);
            job = job with { LastEventSequence = job.LastEventSequence + 1 };
            await write.CommitAsync(cancellationToken);
            return new JobLease(job, workerId, token, job.LeaseExpires!.Value, leaseDuration);
        }
    }

    public async Task<LeaseStatus> HeartbeatAsync(JobLease lease, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lease);
        await using var write = await BeginWriteAsync(cancellationToken);
        var status = await RenewAsync(write, lease, cancellationToken);
        await write.CommitAsync(cancellationToken);
        return status;
    }

    public async Task<LeaseStatus> ReportProgressAsync(JobLease lease, double fraction, string message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lease);
        if (!(fraction >= 0 && fraction <= 1))
            throw Invalid($"progress is a fraction from 0 to 1, not {fraction}");
        message ??= "";
        await using var write = await BeginWriteAsync(cancellationToken);
        var status = await RenewAsync(write, lease, cancellationToken);
        if (status != LeaseStatus.Lost)
        {
            await ExecuteAsync(write, "UPDATE jobs SET progress = @p, message = @m WHERE id = @id", cancellationToken, ("p", fraction), ("m", message), ("id", lease.Job.Id));
            await AppendEventAsync(write, lease.Job.Id, JobEventKind.Progress, JobState.Running, fraction, message, Now(), cancellationToken);
        }
        await write.CommitAsync(cancellationToken);
        return status;
    }

    public async Task<LeaseStatus> AppendLogAsync(JobLease lease, string message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lease);
        if (string.IsNullOrEmpty(message))
            throw Invalid("a log event needs a message");
        await using var write = await BeginWriteAsync(cancellationToken);
        var status = await RenewAsync(write, lease, cancellationToken);
        if (status != LeaseStatus.Lost)
        {
            double progress = await ScalarAsync(write, "SELECT progress FROM jobs WHERE id = @id", cancellationToken, ("id", lease.Job.Id)) is double p ? p : 0;
            await AppendEventAsync(write, lease.Job.Id, JobEventKind.Log, JobState.Running, progress, message, Now(), cancellationToken);
        }
        await write.CommitAsync(cancellationToken);
        return status;
    }

    public async Task<LeaseStatus> RecordUsageAsync(JobLease lease, JobUsage used, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(used);
        if (used.ModelCalls < 0 || used.Tokens < 0 || used.ModelTime < TimeSpan.Zero)
            throw Invalid($"usage adds up: model calls, tokens and model time must not be negative ({used.ModelCalls}, {used.Tokens}, {used.ModelTime})");
        (string, object?)[] args = [("calls", used.ModelCalls), ("tokens", used.Tokens), ("ms", (long)used.ModelTime.TotalMilliseconds), ("id", lease.Job.Id)];
        await using var write = await BeginWriteAsync(cancellationToken);
        var status = await RenewAsync(write, lease, cancellationToken);
        int rows = await ExecuteAsync(write,
            "UPDATE jobs SET model_calls = model_calls + @calls, tokens = tokens + @tokens, model_ms = model_ms + @ms WHERE id = @id", cancellationToken, args);
        if (rows == 0)
            throw new JobStoreException(JobStoreError.NotFound, $"no job '{lease.Job.Id}' to record usage for (was it pruned?)");
        await ExecuteAsync(write,
            "UPDATE job_owners SET model_calls = model_calls + @calls, tokens = tokens + @tokens, model_ms = model_ms + @ms " +
            "WHERE owner = (SELECT owner FROM jobs WHERE id = @id)", cancellationToken, args);
        await write.CommitAsync(cancellationToken);
        return status;
    }

    public async Task<bool> CompleteAsync(JobLease lease, JobOutcome outcome, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(outcome);
        long now = Now();
        await using var write = await BeginWriteAsync(cancellationToken);
        var job = await ReadJobAsync(write, lease.Job.Id, lockRow: true, cancellationToken);
        if (job is null || job.State != JobState.Running || await LeaseTokenAsync(write, lease.Job.Id, cancellationToken) != lease.Token)
            return false;
        bool succeeded = outcome.State == JobState.Succeeded;
        double progress = succeeded ? 1 : job.Progress;
        string message = succeeded ? "done" : JobStates.ToStored(outcome.State);
        await ExecuteAsync(write,
            "UPDATE jobs SET state = @state, finished_ms = @now, progress = @progress, message = @message, error = @error, error_code = @code, result_json = @result, " +
            "lease_token = NULL, lease_expires_ms = NULL WHERE id = @id", cancellationToken,
            ("state", JobStates.ToStored(outcome.State)), ("now", now), ("progress", progress), ("message", message), ("error", outcome.Error),
            ("code", outcome.ErrorCode), ("result", outcome.ResultJson), ("id", lease.Job.Id));
        await AppendEventAsync(write, lease.Job.Id, JobEventKind.State, outcome.State, progress, succeeded ? "done" : outcome.Error, now, cancellationToken);
        await write.CommitAsync(cancellationToken);
        return true;
    }

    public async Task<bool> ReleaseAsync(JobLease lease, string reason, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lease);
        if (string.IsNullOrWhiteSpace(reason))
            throw Invalid("releasing a job needs a reason (it is the job's message while it waits again)");
        long now = Now();
        await using var write = await BeginWriteAsync(cancellationToken);
        var job = await ReadJobAsync(write, lease.Job.Id, lockRow: true, cancellationToken);
        if (job is null || job.State != JobState.Running || await LeaseTokenAsync(write, lease.Job.Id, cancellationToken) != lease.Token)
            return false;
        if (job.CancelRequested)
        {
            // Nobody wants the job any more: end it rather than queue it again.
            string error = $"cancelled by {job.CancelledBy}; its worker stopped ({reason})";
            await ExecuteAsync(write,
                "UPDATE jobs SET state = 'cancelled', finished_ms = @now, message = 'cancelled', error = @error, error_code = 'CANCELLED', lease_token = NULL, lease_expires_ms = NULL WHERE id = @id",
                cancellationToken, ("now", now), ("error", error), ("id", job.Id));
            await AppendEventAsync(write, job.Id, JobEventKind.State, JobState.Cancelled, job.Progress, error, now, cancellationToken);
        }
        else
        {
            // A hand-back is no failed attempt: the take is forgotten, so MaxAttempts still counts only lost leases and crashes.
            string message = $"re-queued: {reason}";
            await ExecuteAsync(write,
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, message = @message, lease_token = NULL, lease_expires_ms = NULL WHERE id = @id",
                cancellationToken, ("message", message), ("id", job.Id));
            await AppendEventAsync(write, job.Id, JobEventKind.State, JobState.Queued, job.Progress, message, now, cancellationToken);
        }
        await write.CommitAsync(cancellationToken);
        return true;
    }

    public async Task<int> RequeueExpiredAsync(CancellationToken cancellationToken = default)
    {
        long now = Now();
        await using var write = await BeginWriteAsync(cancellationToken);
        var expired = new List<JobInfo>();
        await using (var command = Command(write.Connection, write.Transaction,
            $"SELECT {Columns} FROM jobs WHERE state = 'running' AND lease_expires_ms < @now ORDER BY seq" + ForUpdateSkipLocked, ("now", now)))
        {
            expired.AddRange(await ReadJobsAsync(command, cancellationToken));
        }
        foreach (var job in expired)
        {
            string worker = job.WorkerId ?? "?";
            if (job.CancelRequested)
            {
                string error = $"cancelled by {job.CancelledBy}; its worker {worker} stopped renewing its lease before confirming";
                await ExecuteAsync(write,
                    "UPDATE jobs SET state = 'cancelled', finished_ms = @now, message = 'cancelled', error = @error, error_code = 'CANCELLED', lease_token = NULL, lease_expires_ms = NULL WHERE id = @id",
                    cancellationToken, ("now", now), ("error", error), ("id", job.Id));
                await AppendEventAsync(write, job.Id, JobEventKind.State, JobState.Cancelled, job.Progress, error, now, cancellationToken);
            }
            else if (job.Attempts >= Options.MaxAttempts)
            {
                string error = $"the job's worker {worker} stopped renewing its lease on attempt {job.Attempts} of {Options.MaxAttempts}; no attempts are left (JobStoreOptions.MaxAttempts)";
                await ExecuteAsync(write,
                    "UPDATE jobs SET state = 'failed', finished_ms = @now, message = 'failed', error = @error, error_code = 'ABORTED', lease_token = NULL, lease_expires_ms = NULL WHERE id = @id",
                    cancellationToken, ("now", now), ("error", error), ("id", job.Id));
                await AppendEventAsync(write, job.Id, JobEventKind.State, JobState.Failed, job.Progress, error, now, cancellationToken);
            }
            else
            {
                string message = $"re-queued: worker {worker}'s lease expired on attempt {job.Attempts} of {Options.MaxAttempts}";
                await ExecuteAsync(write,
                    "UPDATE jobs SET state = 'queued', message = @message, lease_token = NULL, lease_expires_ms = NULL WHERE id = @id",
                    cancellationToken, ("message", message), ("id", job.Id));
                await AppendEventAsync(write, job.Id, JobEventKind.State, JobState.Queued, job.Progress, message, now, cancellationToken);
            }
        }
        await write.CommitAsync(cancellationToken);
        return expired.Count;
    }

    // ---- helpers ------------------------------------------------------------------------------

    private async Task<LeaseStatus> RenewAsync(WriteScope write, JobLease lease, CancellationToken cancellationToken)
    {
        var job = await ReadJobAsync(write, lease.Job.Id, lockRow: true, cancellationToken);
        if (job is null || job.State != JobState.Running || await LeaseTokenAsync(write, lease.Job.Id, cancellationToken) != lease.Token)
            return LeaseStatus.Lost;
        await ExecuteAsync(write, "UPDATE jobs SET lease_expires_ms = @now + lease_ms WHERE id = @id", cancellationToken, ("now", Now()), ("id", lease.Job.Id));
        return job.CancelRequested ? LeaseStatus.CancelRequested : LeaseStatus.Held;
    }

    private async Task<string?> LeaseTokenAsync(WriteScope write, string id, CancellationToken cancellationToken) =>
        await ScalarAsync(write, "SELECT lease_token FROM jobs WHERE id = @id", cancellationToken, ("id", id)) as string;

    private async Task AppendEventAsync(WriteScope write, string jobId, JobEventKind kind, JobState state, double progress, string message, long now, CancellationToken cancellationToken)
    {
        // The job's row numbers its events: concurrent appends to one job serialise on it, so a
        // reader that has seen event n never later finds an event below n appear.
        long seq = await ScalarLongAsync(write, "UPDATE jobs SET event_seq = event_seq + 1 WHERE id = @id RETURNING event_seq", cancellationToken, ("id", jobId));
        await ExecuteAsync(write,
            "INSERT INTO job_events (job_id, seq, time_ms, kind, state, progress, message) VALUES (@id, @seq, @t, @kind, @state, @p, @m)", cancellationToken,
            ("id", jobId), ("seq", seq), ("t", now), ("kind", KindToStored(kind)), ("state", JobStates.ToStored(state)), ("p", progress), ("m", message));
    }

    private async Task<JobInfo?> ReadJobAsync(WriteScope write, string id, bool lockRow, CancellationToken cancellationToken)
    {
        await using var command = Command(write.Connection, write.Transaction, $"SELECT {Columns} FROM jobs WHERE id = @id" + (lockRow ? ForUpdate : ""), ("id", id));
        var jobs = await ReadJobsAsync(command, cancellationToken);
        return jobs.Count == 0 ? null : jobs[0];
    }

    private async Task<JobInfo?> ReadJobBySeqAsync(WriteScope write, long seq, CancellationToken cancellationToken)
    {
        await using var command = Command(write.Connection, write.Transaction, $"SELECT {Columns} FROM jobs WHERE seq = @seq", ("seq", seq));
        var jobs = await ReadJobsAsync(command, cancellationToken);
        return jobs.Count == 0 ? null : jobs[0];
    }

    private static async Task<List<JobInfo>> ReadJobsAsync(DbCommand command, CancellationToken cancellationToken)
    {
        var jobs = new List<JobInfo>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
            jobs.Add(ReadJob(reader));
        return jobs;
    }

    private static JobInfo ReadJob(DbDataReader r) => new()
    {
        Id = r.GetString(0),
        Owner = r.GetString(1),
        Plugin = r.GetString(2),
        Model = r.GetString(3),
        ParametersJson = r.GetString(4),
        TimeoutSeconds = (int)Long(r, 5),
        TraceParent = r.GetString(6),
        State = JobStates.FromStored(r.GetString(7)),
        Created = DateTimeOffset.FromUnixTimeMilliseconds(Long(r, 8)),
        Started = r.IsDBNull(9) ? null : DateTimeOffset.FromUnixTimeMilliseconds(Long(r, 9)),
        Finished = r.IsDBNull(10) ? null : DateTimeOffset.FromUnixTimeMilliseconds(Long(r, 10)),
        Progress = r.GetDouble(11),
        Message = r.GetString(12),
        Error = r.GetString(13),
        ErrorCode = r.GetString(14),
        ResultJson = r.IsDBNull(15) ? null : r.GetString(15),
        Attempts = (int)Long(r, 16),
        WorkerId = r.IsDBNull(17) ? null : r.GetString(17),
        LeaseExpires = r.IsDBNull(18) ? null : DateTimeOffset.FromUnixTimeMilliseconds(Long(r, 18)),
        CancelRequested = Long(r, 19) != 0,
        CancelledBy = r.IsDBNull(20) ? null : r.GetString(20),
        LastEventSequence = Long(r, 21),
        Usage = new JobUsage(Long(r, 22), Long(r, 23), TimeSpan.FromMilliseconds(Long(r, 24))),
    };

    private static long Long(DbDataReader reader, int ordinal) => Convert.ToInt64(reader.GetValue(ordinal), CultureInfo.InvariantCulture);

    private static JobInfo Visible(JobInfo? job, string id, JobCaller caller, string verb)
    {
        if (job is null)
            throw new JobStoreException(JobStoreError.NotFound, $"no job '{id}' (it never existed, or it finished long enough ago to be pruned)");
        if (!caller.MayAccess(job.Owner))
            throw new JobStoreException(JobStoreError.PermissionDenied, $"job '{id}' belongs to key '{job.Owner}'; only its owner or an admin may {verb} it");
        return job;
    }

    private static void RequireId(string id)
    {
        if (string.IsNullOrWhiteSpace(id))
            throw Invalid("a job id is required");
    }

    private static void Validate(NewJob job)
    {
        if (string.IsNullOrWhiteSpace(job.Owner))
            throw Invalid("a job needs its owner: the submitting key's name");
        if (string.IsNullOrWhiteSpace(job.Plugin))
            throw Invalid("a job needs the plugin to run");
        if (string.IsNullOrWhiteSpace(job.Model))
            throw Invalid("a job needs the model it analyses");
        if (job.TimeoutSeconds < 0)
            throw Invalid($"timeout_seconds must be 0 (the worker's default) or more, not {job.TimeoutSeconds}");
        try
        {
            using var document = JsonDocument.Parse(job.ParametersJson ?? "");
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw Invalid($"parameters_json must be a JSON object, not {document.RootElement.ValueKind.ToString().ToLowerInvariant()}");
        }
        catch (JsonException e)
        {
            throw Invalid($"parameters_json is not valid JSON: {e.Message}");
        }
    }

    private static JobStoreException Invalid(string message) => new(JobStoreError.InvalidArgument, message);

    private static string KindToStored(JobEventKind kind) => kind switch
    {
        JobEventKind.State => "state",
        JobEventKind.Progress => "progress",
        JobEventKind.Log => "log",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "not an event kind"),
    };

    private static JobEventKind KindFromStored(string stored) => stored switch
    {
        "state" => JobEventKind.State,
        "progress" => JobEventKind.Progress,
        "log" => JobEventKind.Log,
        _ => throw new InvalidDataException($"the job store holds an unknown event kind '{stored}'"),
    };

    protected static DbCommand Command(DbConnection connection, DbTransaction? transaction, string sql, params (string Name, object? Value)[] args)
    {
        var command = connection.CreateCommand();
        command.Transaction = transaction;
#pragma warning disable CA2100 // Every statement is built here from constants; values travel as parameters.
        command.CommandText = sql;
#pragma warning restore CA2100
        foreach (var (name, value) in args)
        {
            var parameter = command.CreateParameter();
            parameter.ParameterName = "@" + name;
            parameter.Value = value ?? DBNull.Value;
            command.Parameters.Add(parameter);
        }
        return command;
    }

    protected static async Task<int> ExecuteAsync(WriteScope write, string sql, CancellationToken cancellationToken, params (string, object?)[] args)
    {
        await using var command = Command(write.Connection, write.Transaction, sql, args);
        return await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private static async Task<object?> ScalarAsync(WriteScope write, string sql, CancellationToken cancellationToken, params (string, object?)[] args)
    {
        await using var command = Command(write.Connection, write.Transaction, sql, args);
        var value = await command.ExecuteScalarAsync(cancellationToken);
        return value is DBNull ? null : value;
    }

    private static async Task<long> ScalarLongAsync(WriteScope write, string sql, CancellationToken cancellationToken, params (string, object?)[] args) =>
        Convert.ToInt64(await ScalarAsync(write, sql, cancellationToken, args), CultureInfo.InvariantCulture);

    /// <summary>A connection and its write transaction (and, for SQLite, this process's writer slot).</summary>
    protected sealed class WriteScope(DbConnection connection, DbTransaction transaction, Action? release = null) : IAsyncDisposable
    {
        public DbConnection Connection { get; } = connection;
        public DbTransaction Transaction { get; } = transaction;

        public Task CommitAsync(CancellationToken cancellationToken) => Transaction.CommitAsync(cancellationToken);

        public async ValueTask DisposeAsync()
        {
            try
            {
                await Transaction.DisposeAsync();
                await Connection.DisposeAsync();
            }
            finally
            {
                release?.Invoke();
            }
        }
    }
}
