using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using InterpMesh.Bench.Harness;
using InterpMesh.Contracts.V1;
using InterpMesh.Hosting;
using InterpMesh.Tests;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Bench.Benchmarks;

/// <summary>
/// <c>interpmesh-bench jobs</c>: job throughput through the shared PostgreSQL job store, one
/// gateway and one analysis worker against two of each, in one run on one throwaway cluster and
/// database (<see cref="PostgresServer"/>), and WatchJob's event latency. The workers run the
/// <c>bench-wait</c> plugin (bench/WaitPlugin), which only waits, so a worker's throughput is
/// bounded by its job slots (<c>Worker:MaxConcurrentJobs</c>), not by this machine's CPU; two
/// workers should then give twice the jobs/s unless the store (or something else shared) limits it.
/// Clients keep <c>--in-flight-per-slot</c> jobs per worker slot submitted through the gateways in
/// turn and watch each to its end through the next gateway; jobs/s counts the jobs whose final
/// event arrived in the measured window after a warm-up. Each job's progress report carries the
/// time of its <c>ReportProgress</c> call; the time until a watcher receives it is the event latency.
/// </summary>
internal sealed class JobsBenchmark : Benchmark
{
    /// <summary>The bench plugin's id (bench/WaitPlugin) and the message prefix its progress carries.</summary>
    private const string Plugin = "bench-wait";
    private const string SentPrefix = "sent ";

    private readonly Option<int> secondsOption = SharedOptions.Int("--seconds", 30, 1, "measured seconds per topology", "S");
    private readonly Option<int> warmupOption = SharedOptions.Int("--warmup-seconds", 5, 0, "seconds per topology before measuring", "W");
    private readonly Option<int> jobMsOption = SharedOptions.Int("--job-ms", 50, 0, "how long each job's plugin waits (a stand-in for a model call)", "MS");
    private readonly Option<int> reportsOption = SharedOptions.Int("--reports", 1, 1, "timestamped progress reports per job (latency samples)", "N");
    private readonly Option<int> slotsOption = SharedOptions.Int("--slots", 4, 1, "Worker:MaxConcurrentJobs of every worker (the same in both topologies)", "N");
    private readonly Option<int> depthOption = SharedOptions.Int("--in-flight-per-slot", 6, 1, "jobs the clients keep submitted per worker slot", "D");
    private readonly Option<int> roundsOption = SharedOptions.Int("--rounds", 1, 1, "rounds of 1x1 then 2x2 (on a shared machine, alternating evens out drifting load); totals reported", "R");
    private readonly Option<int> workerPollOption = SharedOptions.Int("--worker-poll-ms", 250, 10, "Worker:Jobs:PollMilliseconds (an idle slot's wait before looking again; product default 250)", "MS");
    private readonly Option<int> watchPollOption = SharedOptions.Int("--watch-poll-ms", 250, 10, "Gateway:Jobs:PollMilliseconds (WatchJob's store poll; product default 250)", "MS");

    public JobsBenchmark()
        : base("jobs", "Jobs/s through the shared PostgreSQL job store, 2 gateways + 2 workers vs 1 + 1, on a plugin that only waits; WatchJob event latency p50/p99.") =>
        Takes(secondsOption, warmupOption, roundsOption, jobMsOption, reportsOption, slotsOption, depthOption, workerPollOption, watchPollOption);

    public override BenchReport Run(BenchContext context)
    {
        var settings = new Settings(context.Get(secondsOption), context.Get(warmupOption), context.Get(jobMsOption), context.Get(reportsOption),
            context.Get(slotsOption), context.Get(depthOption), context.Get(workerPollOption), context.Get(watchPollOption));
        string plugins = PluginsFolder();
        using var server = new PostgresServer("The `jobs` benchmark needs");
        server.StartAsync().GetAwaiter().GetResult();
        string connection = server.CreateDatabaseAsync().GetAwaiter().GetResult();

        var ones = new List<Measured>();
        var twos = new List<Measured>();
        int rounds = context.Get(roundsOption);
        for (int round = 0; round < rounds; round++)
        {
            ones.Add(RunTopology(context, settings, 1, plugins, connection, server.ProcessId));
            twos.Add(RunTopology(context, settings, 2, plugins, connection, server.ProcessId));
        }
        var one = Measured.Total(ones);
        var two = Measured.Total(twos);
        var result = new Dictionary<string, object?>
        {
            ["job_ms"] = settings.JobMs,
            ["reports_per_job"] = settings.Reports,
            ["slots_per_worker"] = settings.Slots,
            ["in_flight_per_slot"] = settings.Depth,
            ["worker_poll_ms"] = settings.WorkerPollMs,
            ["watch_poll_ms"] = settings.WatchPollMs,
            ["seconds"] = settings.Seconds,
            ["rounds"] = rounds,
            ["warmup_seconds"] = settings.Warmup,
            ["cores"] = Environment.ProcessorCount,
            ["jobs_completed_1x1"] = one.Completed,
            ["jobs_per_second_1x1"] = one.JobsPerSecond,
            ["slot_bound_jobs_per_second_1x1"] = SlotBound(settings, 1),
            ["process_cpu_1x1"] = one.ProcessCpu,
            ["postgres_cpu_1x1"] = one.PostgresCpu,
            ["store_transactions_per_job_1x1"] = one.TransactionsPerJob,
            ["machine_cpu_1x1"] = one.MachineCpu,
            ["watch_latency_p50_ms_1x1"] = Percentile(one.Latencies, 0.5),
            ["watch_latency_p99_ms_1x1"] = Percentile(one.Latencies, 0.99),
            ["jobs_completed_2x2"] = two.Completed,
            ["jobs_per_second_2x2"] = two.JobsPerSecond,
            ["slot_bound_jobs_per_second_2x2"] = SlotBound(settings, 2),
            ["process_cpu_2x2"] = two.ProcessCpu,
            ["postgres_cpu_2x2"] = two.PostgresCpu,
            ["store_transactions_per_job_2x2"] = two.TransactionsPerJob,
            ["machine_cpu_2x2"] = two.MachineCpu,
            ["watch_latency_p50_ms_2x2"] = Percentile(two.Latencies, 0.5),
            ["watch_latency_p99_ms_2x2"] = Percentile(two.Latencies, 0.99),
            ["ratio_2x2_vs_1x1"] = one.JobsPerSecond > 0 ? two.JobsPerSecond / one.JobsPerSecond : 0,
            ["latency_events"] = one.Latencies.Count + two.Latencies.Count,
            ["watch_latency_p50_ms"] = Percentile([.. one.Latencies, .. two.Latencies], 0.5),
            ["watch_latency_p99_ms"] = Percentile([.. one.Latencies, .. two.Latencies], 0.99),
        };
        return new BenchReport(result);
    }

    private sealed record Settings(int Seconds, int Warmup, int JobMs, int Reports, int Slots, int Depth, int WorkerPollMs, int WatchPollMs);

    private sealed record Measured(long Completed, double JobsPerSecond, double ProcessCpu, double PostgresCpu, double MachineCpu, long Transactions, List<double> Latencies)
    {
        /// <summary>Transactions the database committed or rolled back in the window per job completed (every host's, and the watchers' reads).</summary>
        public double TransactionsPerJob => Completed > 0 ? (double)Transactions / Completed : 0;

        /// <summary>Rounds of equal length together: their jobs summed, rates and CPU averaged, latencies pooled.</summary>
        public static Measured Total(List<Measured> rounds) => new(rounds.Sum(r => r.Completed), rounds.Average(r => r.JobsPerSecond),
            rounds.Average(r => r.ProcessCpu), rounds.Average(r => r.PostgresCpu), rounds.Average(r => r.MachineCpu), rounds.Sum(r => r.Transactions), [.. rounds.SelectMany(r => r.Latencies)]);
    }

    /// <summary>The jobs/s the workers' slots allow if nothing but the plugin's wait took time.</summary>
    private static double SlotBound(Settings s, int workers) => s.JobMs > 0 ? workers * s.Slots * 1000.0 / s.JobMs : double.PositiveInfinity;

    /// <summary>The laid-out bench plugin (built with the bench, bench/WaitPlugin → bench/plugins/bench-wait/).</summary>
    private static string PluginsFolder()
    {
        string folder = Path.Combine(BenchContext.Repository(), "bench", "plugins");
        if (!File.Exists(Path.Combine(folder, Plugin, "plugin.json")))
            throw new BenchUsageException($"the bench plugin is not built: no {Path.Combine(folder, Plugin, "plugin.json")}; build the bench (`dotnet build -c Release bench/InterpMesh.Bench`), which builds bench/WaitPlugin");
        return folder;
    }

    /// <summary>Starts <paramref name="replicas"/> workers and gateways on the shared database, loads them, stops them; what was measured.</summary>
    private static Measured RunTopology(BenchContext context, Settings s, int replicas, string plugins, string connection, int? postmaster)
    {
        // Every host its own pool (Npgsql pools by connection string; separate processes in a deployment).
        string Pooled(string name) => $"{connection};Application Name={name}";
        // The plugin makes no model call; the model address is only configuration the hosts require.
        var models = new Dictionary<string, string> { ["bench"] = "http://127.0.0.1:9" };
        int inFlight = replicas * s.Slots * s.Depth;
        var workers = new List<WebApplication>();
        var gateways = new List<WebApplication>();
        try
        {
            for (int i = 0; i < replicas; i++)
            {
                var worker = LocalHosts.WorkerSettings(models, plugins, context.TempFolder());
                worker["Logging:LogLevel:Default"] = "Error";
                worker["Worker:Jobs:ConnectionString"] = Pooled($"bench-worker-{replicas}x{replicas}-{i}");
                worker["Worker:MaxConcurrentJobs"] = s.Slots.ToString(CultureInfo.InvariantCulture);
                worker["Worker:Jobs:PollMilliseconds"] = s.WorkerPollMs.ToString(CultureInfo.InvariantCulture);
                // All clients are one anonymous key here, standing for many users: the per-key
                // fairness quota (4 running over every worker by default) would cap the mesh.
                worker["Worker:Jobs:MaxRunningPerKey"] = "100000";
                workers.Add(LocalHosts.StartWorkerAsync(worker).GetAwaiter().GetResult());
            }
            for (int i = 0; i < replicas; i++)
            {
                var gateway = LocalHosts.GatewaySettings(models, context.TempFolder());
                gateway["Logging:LogLevel:Default"] = "Error";
                gateway["Gateway:Jobs:ConnectionString"] = Pooled($"bench-gateway-{replicas}x{replicas}-{i}");
                gateway["Gateway:Jobs:PollMilliseconds"] = s.WatchPollMs.ToString(CultureInfo.InvariantCulture);
                // The same for the key's queued-plus-running quota (8) and, with deep queues, the queue's size (64).
                gateway["Gateway:RateLimit:MaxJobsPerKey"] = "100000";
                gateway["Gateway:MaxQueuedJobs"] = Math.Max(64, inFlight).ToString(CultureInfo.InvariantCulture);
                gateways.Add(LocalHosts.StartGatewayAsync(gateway).GetAwaiter().GetResult());
            }
            if (!context.Json)
                context.Out.WriteLine($"{replicas} gateway(s) + {replicas} worker(s), {s.Slots} slots each, {inFlight} jobs in flight: {s.Warmup} s warm-up, {s.Seconds} s measured…");
            return Load(gateways, s, inFlight, postmaster, connection);
        }
        finally
        {
            // Gateways first, as a deployment drains; the clients have let every job finish.
            LocalHosts.StopAsync([.. gateways, .. workers]).GetAwaiter().GetResult();
        }
    }

    private static Measured Load(List<WebApplication> gateways, Settings s, int inFlight, int? postmaster, string connection)
    {
        var channels = gateways.Select(g => InterpMesh.Client.Channels.ForAddress(LocalHosts.GrpcAddress(g))).ToList();
        try
        {
            var clients = channels.Select(c => new AnalysisService.AnalysisServiceClient(c)).ToArray();
            var request = new AnalysisRequest
            {
                Plugin = Plugin,
                ParametersJson = $$"""{"ms":{{s.JobMs}},"reports":{{s.Reports}}}""",
            };
            var clock = Stopwatch.StartNew();
            var start = TimeSpan.FromSeconds(s.Warmup);
            var end = start + TimeSpan.FromSeconds(s.Seconds);
            long completed = 0;
            var latencies = new List<double>[inFlight];
            int turn = 0;

            async Task ClientAsync(int slot)
            {
                latencies[slot] = [];
                try
                {
                    await SubmitAndWatchAsync(slot);
                }
                catch (RpcException e)
                {
                    // As the harness reports a failed benchmark: one line saying what the gateway answered.
                    throw new InvalidOperationException($"a client's job call through a gateway failed: {e.StatusCode}: {e.Status.Detail}", e);
                }
            }

            async Task SubmitAndWatchAsync(int slot)
            {
                while (clock.Elapsed < end)
                {
                    int at = Interlocked.Increment(ref turn);
                    var job = await clients[at % clients.Length].SubmitJobAsync(request);
                    // Watched through the next gateway: a replica other than the one that queued it.
                    using var watch = clients[(at + 1) % clients.Length].WatchJob(new WatchJobRequest { Id = job.Id });
                    bool snapshot = true;
                    await foreach (var e in watch.ResponseStream.ReadAllAsync())
                    {
                        var now = DateTime.UtcNow.Ticks;
                        bool inWindow = clock.Elapsed >= start && clock.Elapsed < end;
                        if (e.Finished is { } finished)
                        {
                            if (finished.State != JobState.Succeeded)
                                throw new InvalidOperationException($"job {finished.Id} ended {finished.State}: {finished.Error}");
                            if (inWindow)
                                Interlocked.Increment(ref completed);
                            break;
                        }
                        // The first message is the job as the gateway read it, not an event it was sent.
                        if (!snapshot && inWindow && e.Progress.Message.StartsWith(SentPrefix, StringComparison.Ordinal)
                            && long.TryParse(e.Progress.Message.AsSpan(SentPrefix.Length), NumberStyles.Integer, CultureInfo.InvariantCulture, out long sent))
                            latencies[slot].Add(TimeSpan.FromTicks(now - sent).TotalMilliseconds);
                        snapshot = false;
                    }
                }
            }

            var tasks = Enumerable.Range(0, inFlight).Select(i => Task.Run(() => ClientAsync(i))).ToArray();
            WaitUntil(clock, start);
            var first = CpuSample.Now(postmaster);
            long firstTransactions = Transactions(connection);
            // The window closes at `end`; the clients then let their last jobs finish (not counted).
            WaitUntil(clock, end);
            var last = CpuSample.Now(postmaster);
            long transactions = Transactions(connection) - firstTransactions;
            Task.WhenAll(tasks).GetAwaiter().GetResult();
            var window = end - start;
            var (processCpu, postgresCpu, machineCpu) = last.Since(first);
            return new Measured(completed, completed / window.TotalSeconds, processCpu, postgresCpu, machineCpu, transactions, [.. latencies.SelectMany(l => l)]);
        }
        finally
        {
            foreach (var channel in channels)
                channel.Dispose();
        }
    }

    private static void WaitUntil(Stopwatch clock, TimeSpan at)
    {
        var left = at - clock.Elapsed;
        if (left > TimeSpan.Zero)
            Thread.Sleep(left);
    }

    /// <summary>The database's transactions so far (pg_stat_database; its counters lag by up to a second).</summary>
    private static long Transactions(string connection)
    {
        using var stats = new Npgsql.NpgsqlConnection($"{connection};Application Name=bench-stats");
        stats.Open();
        using var command = new Npgsql.NpgsqlCommand("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()", stats);
        return Convert.ToInt64(command.ExecuteScalar(), CultureInfo.InvariantCulture);
    }

    private static double Percentile(List<double> values, double q) =>
        values.Count == 0 ? 0 : values.Order().ElementAt((int)Math.Round(q * (values.Count - 1)));

    /// <summary>
    /// CPU use since a moment, as fractions of all cores: this process's (every host and client in
    /// it), the PostgreSQL server's (its postmaster, live backends and reaped ones), and the whole
    /// machine's (other users' load too). Linux's /proc; zeros elsewhere.
    /// </summary>
    private sealed record CpuSample(TimeSpan Wall, TimeSpan Process, double Postgres, long MachineBusy, long MachineTotal)
    {
        private static readonly Stopwatch Clock = Stopwatch.StartNew();

        /// <summary>USER_HZ: the unit of /proc's CPU times.</summary>
        private const double TicksPerSecond = 100;

        public static CpuSample Now(int? postmaster)
        {
            long busy = 0, total = 0;
            // /proc/stat's first line: cpu user nice system idle iowait irq softirq steal … (ticks over all cores).
            if (File.Exists("/proc/stat"))
            {
                var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1)
                    .Take(8).Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
                total = fields.Sum();
                busy = total - fields[3] - fields[4];
            }
            using var self = System.Diagnostics.Process.GetCurrentProcess();
            return new CpuSample(Clock.Elapsed, self.TotalProcessorTime, postmaster is { } pid ? PostgresSeconds(pid) : 0, busy, total);
        }

        public (double Process, double Postgres, double Machine) Since(CpuSample earlier)
        {
            double wall = (Wall - earlier.Wall).TotalSeconds * Environment.ProcessorCount;
            long total = MachineTotal - earlier.MachineTotal;
            return (wall > 0 ? (Process - earlier.Process).TotalSeconds / wall : 0,
                wall > 0 ? (Postgres - earlier.Postgres) / wall : 0,
                total > 0 ? (double)(MachineBusy - earlier.MachineBusy) / total : 0);
        }

        /// <summary>CPU seconds of the postmaster with its reaped children, plus its live children.</summary>
        private static double PostgresSeconds(int postmaster)
        {
            long ticks = 0;
            foreach (var dir in Directory.Exists("/proc") ? Directory.EnumerateDirectories("/proc") : [])
            {
                if (!int.TryParse(Path.GetFileName(dir), out int pid))
                    continue;
                string stat;
                try
                {
                    stat = File.ReadAllText(Path.Combine(dir, "stat"));
                }
                catch (IOException)
                {
                    continue;
                }
                catch (UnauthorizedAccessException)
                {
                    continue;
                }
                // pid (comm) state ppid … utime(14) stime(15) cutime(16) cstime(17); comm may hold spaces.
                var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                long Field(int n) => long.Parse(f[n - 3], CultureInfo.InvariantCulture);
                if (pid == postmaster)
                    ticks += Field(14) + Field(15) + Field(16) + Field(17);
                else if (Field(4) == postmaster)
                    ticks += Field(14) + Field(15);
            }
            return ticks / TicksPerSecond;
        }
    }
}
