using System.Text.Json;
using Grpc.Core;
using InterpMesh.AnalysisWorker.Hosting;
using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Hosting;
using InterpMesh.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Analysis workers as their own host (#20): a gateway without plugins offers what workers
/// publish in the job store, refuses what none serves, carries no torch or plugin loader, refuses
/// settings that moved to the worker; a worker refuses bad settings and recycles its process when
/// a plugin cannot be stopped.
/// </summary>
[Collection("gateways")]
public sealed class WorkerHostTests
{
    [Fact]
    public async Task A_gateway_without_plugins_lists_what_a_worker_published_and_validates_parameters_against_it()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-gw-published-");
        WebApplication? worker = null, gateway = null;
        try
        {
            worker = await LocalHosts.StartWorkerAsync(Mesh.WorkerSettings(["http://127.0.0.1:1"], plugins, data));
            // The gateway is given no plugins folder at all: its catalog is the store's.
            string none = Path.Combine(data, "no-such-plugins-folder");
            (gateway, var address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], none, data, startWorker: false);
            using var channel = Mesh.Channel(address);
            var client = new AnalysisService.AnalysisServiceClient(channel);

            var listed = await client.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
            Assert.Contains(listed.Plugins, p => p.Id == "slow" && p.Loaded && p.Version == "1.0.0");
            Assert.Contains(listed.Plugins, p => p.Id == "token-stats" && p.Loaded);
            var broken = Assert.Single(listed.Plugins, p => p.Id == "broken-dll");
            Assert.False(broken.Loaded);
            Assert.NotEmpty(broken.Error);
            var slow = await client.DescribePluginAsync(new DescribePluginRequest { Id = "slow" }, Mesh.As(Mesh.ReaderKey));
            Assert.Equal("integer", JsonDocument.Parse(slow.ParameterSchemaJson).RootElement.GetProperty("properties").GetProperty("steps").GetProperty("type").GetString());

            // Validated at submission, against the published schema, with the property named.
            var bad = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(
                new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 0}""" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.InvalidArgument, bad.StatusCode);
            Assert.Contains("parameters.steps", bad.Status.Detail, StringComparison.Ordinal);
            var failed = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(new AnalysisRequest { Plugin = "broken-dll" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.FailedPrecondition, failed.StatusCode);
            Assert.Contains("failed to load on analysis worker", failed.Status.Detail, StringComparison.Ordinal);

            // A valid one runs on the worker.
            var job = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey));
            var final = await SharedJobsTests.WaitUntil(client, job.Id, j => j.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled);
            Assert.True(final.State == JobState.Succeeded, final.Error);
        }
        finally
        {
            await Mesh.StopAsync(gateway, worker);
            TempFolders.Delete(plugins, data);
        }
    }

    [Fact]
    public async Task Submitting_a_plugin_no_worker_serves_says_what_to_do()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-gw-unserved-");
        string empty = TempFolders.Create("interpmesh-gw-noworker-");
        WebApplication? gateway = null, lone = null;
        try
        {
            (gateway, var address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data);
            using var channel = Mesh.Channel(address);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var e = await Assert.ThrowsAsync<RpcException>(() => client.SubmitJobAsync(new AnalysisRequest { Plugin = "not-installed" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Contains("no analysis worker serves plugin 'not-installed'", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("ListPlugins shows", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("slow", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("start a worker with the plugin in Worker:PluginsPath", e.Status.Detail, StringComparison.Ordinal);

            // A store no worker ever published to: nothing is offered, and the error says so.
            (lone, var loneAddress) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], empty, empty, startWorker: false);
            using var loneChannel = Mesh.Channel(loneAddress);
            var loneClient = new AnalysisService.AnalysisServiceClient(loneChannel);
            Assert.Empty((await loneClient.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey))).Plugins);
            e = await Assert.ThrowsAsync<RpcException>(() => loneClient.SubmitJobAsync(new AnalysisRequest { Plugin = "slow" }, Mesh.As(Mesh.AliceKey)).ResponseAsync);
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Contains("no analysis worker serves plugin 'slow'; ListPlugins shows none", e.Status.Detail, StringComparison.Ordinal);
            var missing = await Assert.ThrowsAsync<RpcException>(() => loneClient.DescribePluginAsync(new DescribePluginRequest { Id = "slow" }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
            Assert.Equal(StatusCode.NotFound, missing.StatusCode);
            Assert.Contains("Worker:PluginsPath", missing.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            await Mesh.StopAsync(gateway, lone);
            TempFolders.Delete(plugins, data, empty);
        }
    }

    [Fact]
    public void The_gateway_references_neither_torch_nor_the_plugin_loader_nor_plugin_code()
    {
        string[] forbidden = ["TorchSharp", "McMaster.NETCore.Plugins", "InterpMesh.Runtime", "InterpMesh.Plugins", "libtorch"];
        var references = typeof(GatewayApp).Assembly.GetReferencedAssemblies().Select(a => a.Name!).ToList();
        Assert.DoesNotContain(references, r => forbidden.Any(f => r.StartsWith(f, StringComparison.Ordinal)));
        // The whole closure, as the published gateway resolves it.
        string deps = Path.Combine(AppContext.BaseDirectory, "InterpMesh.Gateway.deps.json");
        Assert.True(File.Exists(deps), $"{deps} is not beside the tests");
        using var doc = JsonDocument.Parse(File.ReadAllText(deps));
        var libraries = doc.RootElement.GetProperty("libraries").EnumerateObject().Select(l => l.Name.Split('/')[0]).ToList();
        Assert.Contains("InterpMesh.Jobs", libraries);
        Assert.DoesNotContain(libraries, l => forbidden.Any(f => l.StartsWith(f, StringComparison.OrdinalIgnoreCase)));
        // The worker is where they are.
        using var worker = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "InterpMesh.AnalysisWorker.deps.json")));
        var workerLibraries = worker.RootElement.GetProperty("libraries").EnumerateObject().Select(l => l.Name.Split('/')[0]).ToList();
        Assert.Contains("McMaster.NETCore.Plugins", workerLibraries);
        Assert.Contains(workerLibraries, l => l.StartsWith("TorchSharp", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_worker_with_wrong_settings_does_not_start_and_names_each_key()
    {
        string data = TempFolders.Create("interpmesh-wk-badconfig-");
        try
        {
            var settings = Mesh.WorkerSettings([], data, data);
            settings["Worker:MaxConcurrentJobs"] = "0";
            settings["Worker:Jobs:LeaseSeconds"] = "1";
            settings["Worker:CallTimeoutSeconds"] = "0";
            settings["Worker:DefaultModel"] = "gpt2";
            settings["Worker:MaxResultBytes"] = "8388608";
            var e = await Assert.ThrowsAnyAsync<Exception>(() => LocalHosts.StartWorkerAsync(settings));
            Assert.Contains("Worker:Models is empty", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:MaxConcurrentJobs must be from 1 to 256, got 0", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:Jobs:LeaseSeconds must be from 3 to 3600, got 1", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:CallTimeoutSeconds must be at least 1, got 0", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:DefaultModel 'gpt2' is not one of the configured models", e.Message, StringComparison.Ordinal);
            Assert.Contains("Worker:MaxResultBytes must be from 1024 to 3670016", e.Message, StringComparison.Ordinal);

            settings = Mesh.WorkerSettings(["ftp://127.0.0.1:1"], data, data);
            e = await Assert.ThrowsAnyAsync<Exception>(() => LocalHosts.StartWorkerAsync(settings));
            Assert.Contains("Worker:Models:tiny:Endpoints has 'ftp://127.0.0.1:1'", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            TempFolders.Delete(data);
        }
    }

    [Fact]
    public async Task A_gateway_configured_with_settings_that_moved_to_the_worker_refuses_to_start_naming_them()
    {
        string data = TempFolders.Create("interpmesh-gw-moved-");
        try
        {
            var e = await Assert.ThrowsAnyAsync<Exception>(() => Mesh.StartGatewayAsync(["http://127.0.0.1:1"], data, data, new()
            {
                ["Gateway:PluginsPath"] = data,
                ["Gateway:HotReload"] = "true",
                ["Gateway:MaxConcurrentJobs"] = "2",
                ["Gateway:Jobs:RunWorker"] = "false",
            }, startWorker: false));
            Assert.Contains("Gateway:PluginsPath moved to the analysis worker's settings (Worker:PluginsPath, section Worker:)", e.Message, StringComparison.Ordinal);
            Assert.Contains("Gateway:HotReload moved to the analysis worker's settings (Worker:HotReload", e.Message, StringComparison.Ordinal);
            Assert.Contains("Gateway:MaxConcurrentJobs moved to the analysis worker's settings (Worker:MaxConcurrentJobs", e.Message, StringComparison.Ordinal);
            Assert.Contains("Gateway:Jobs:RunWorker moved to the analysis worker's settings", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            TempFolders.Delete(data);
        }
    }

    [Fact]
    public async Task A_plugin_that_ignores_cancellation_recycles_the_worker_and_its_other_job_goes_back_to_the_queue()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-wk-recycle-");
        WebApplication? worker = null, gateway = null;
        int exitCode = Environment.ExitCode;
        try
        {
            var settings = Mesh.WorkerSettings(["http://127.0.0.1:1"], plugins, data);
            settings["Worker:RecycleStuckPlugins"] = "true";
            settings["Worker:MaxConcurrentJobs"] = "2";
            worker = await LocalHosts.StartWorkerAsync(settings);
            var stopping = new TaskCompletionSource();
            worker.Lifetime.ApplicationStopping.Register(() => stopping.TrySetResult());
            (gateway, var address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, startWorker: false);
            using var channel = Mesh.Channel(address);
            var client = new AnalysisService.AnalysisServiceClient(channel);

            var other = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
            await SharedJobsTests.WaitUntil(client, other.Id, j => j.State == JobState.Running);
            var stuck = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "hangs", TimeoutSeconds = 1 }, Mesh.As(Mesh.AliceKey));

            // Its time limit (1 s) and the stop grace (5 s) later, the worker gives up on the plugin and stops its host.
            Assert.Same(stopping.Task, await Task.WhenAny(stopping.Task, Task.Delay(TimeSpan.FromSeconds(30))));
            Assert.True(worker.Services.GetRequiredService<WorkerRecycler>().Requested);
            Assert.Equal(AnalysisWorkerApp.RecycleExitCode, Environment.ExitCode);
            var ended = await SharedJobsTests.WaitUntil(client, stuck.Id, j => j.State != JobState.Running && j.State != JobState.Queued, seconds: 30);
            Assert.Equal((JobState.Failed, "DEADLINE_EXCEEDED"), (ended.State, ended.ErrorCode));
            Assert.Contains("abandoned", ended.Error, StringComparison.Ordinal);
            // The other job was released, not failed: it waits for the next worker, its take not counted as an attempt.
            var released = await SharedJobsTests.WaitUntil(client, other.Id, j => j.State == JobState.Queued, seconds: 30);
            Assert.Equal(0, released.Attempts);
            Assert.Contains("stopped before the job finished", released.Message, StringComparison.Ordinal);
        }
        finally
        {
            // In process, the test host's exit code must not keep the worker's.
            Environment.ExitCode = exitCode;
            await Mesh.StopAsync(gateway, worker);
            TempFolders.Delete(plugins, data);
        }
    }

    [Fact]
    public async Task In_process_a_stuck_plugin_is_abandoned_and_the_worker_keeps_taking_jobs()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-wk-abandon-");
        WebApplication? gateway = null;
        try
        {
            // Mesh's workers run with Worker:RecycleStuckPlugins=false, as interpmesh up's does.
            (gateway, var address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data);
            using var channel = Mesh.Channel(address);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var stuck = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "hangs", TimeoutSeconds = 1 }, Mesh.As(Mesh.AliceKey));
            var ended = await SharedJobsTests.WaitUntil(client, stuck.Id, j => j.State == JobState.Failed, seconds: 30);
            Assert.Contains("abandoned", ended.Error, StringComparison.Ordinal);
            var worker = Mesh.WorkerOf(gateway);
            Assert.False(worker.Services.GetRequiredService<WorkerRecycler>().Requested);
            Assert.False(worker.Lifetime.ApplicationStopping.IsCancellationRequested);
            var next = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey));
            Assert.Equal(JobState.Succeeded, (await SharedJobsTests.WaitUntil(client, next.Id, j => j.State is JobState.Succeeded or JobState.Failed)).State);
        }
        finally
        {
            await Mesh.StopAsync(gateway);
            TempFolders.Delete(plugins, data);
        }
    }

    [Fact]
    public async Task The_worker_exports_its_plugins_runs_and_the_store_s_queue_depth_on_its_metrics_endpoint()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string data = TempFolders.Create("interpmesh-wk-metrics-");
        int metricsPort = Ports.Free();
        WebApplication? worker = null, gateway = null;
        try
        {
            var settings = Mesh.WorkerSettings(["http://127.0.0.1:1"], plugins, data);
            settings["Kestrel:Endpoints:Metrics:Url"] = $"http://127.0.0.1:{metricsPort}";
            settings["Kestrel:Endpoints:Metrics:Protocols"] = "Http1";
            worker = await LocalHosts.StartWorkerAsync(settings);
            (gateway, var address) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, data, startWorker: false);
            using var channel = Mesh.Channel(address);
            var client = new AnalysisService.AnalysisServiceClient(channel);
            var job = await client.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 1}""" }, Mesh.As(Mesh.AliceKey));
            Assert.Equal(JobState.Succeeded, (await SharedJobsTests.WaitUntil(client, job.Id, j => j.State is JobState.Succeeded or JobState.Failed)).State);

            using var http = new HttpClient();
            string text = await http.GetStringAsync($"http://127.0.0.1:{metricsPort}/metrics");
            string Line(string name) => text.Split('\n').FirstOrDefault(l => l.StartsWith(name, StringComparison.Ordinal)) ?? "";
            string all = string.Join(" | ", text.Split('\n').Where(l => l.StartsWith("interpmesh", StringComparison.Ordinal)));
            // The test plugins folder: seven that load (the sample, slow, throws, hangs, chatty, hoards, bulky) and four that do not
            // (future-sdk, throws-on-load, broken-dll, no-manifest).
            Assert.True(Line("interpmesh_worker_plugins_failed").EndsWith(" 4", StringComparison.Ordinal), all);
            Assert.True(Line("interpmesh_worker_plugins_loaded").EndsWith(" 7", StringComparison.Ordinal), all);
            Assert.Contains(text.Split('\n'), l => l.StartsWith("interpmesh_worker_plugin_runs_total", StringComparison.Ordinal)
                && l.Contains("plugin=\"slow\"", StringComparison.Ordinal) && l.Contains("outcome=\"succeeded\"", StringComparison.Ordinal));
            Assert.NotEqual("", Line("interpmesh_jobs_queued"));
            Assert.NotEqual("", Line("interpmesh_worker_jobs_running"));
        }
        finally
        {
            await Mesh.StopAsync(gateway, worker);
            TempFolders.Delete(plugins, data);
        }
    }
}
