using Grpc.Core;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// Two gateways on one real PostgreSQL database (a throwaway cluster, as in Jobs.Tests), each with
/// its worker, and no shared folder for jobs: what a deployment with several replicas runs.
/// </summary>
[Collection("gateways")]
public sealed class PostgresJobsTests(PostgresCluster cluster) : IClassFixture<PostgresCluster>
{
    [Fact]
    public async Task A_job_submitted_through_one_gateway_is_watched_to_the_end_through_another_and_listed_by_both()
    {
        var plugins = await TestPlugins.PluginsFolderAsync();
        string dataA = TempFolders.Create("interpmesh-gw-pg-a-"), dataB = TempFolders.Create("interpmesh-gw-pg-b-");
        var settings = new Dictionary<string, string?> { ["Gateway:Jobs:ConnectionString"] = await cluster.CreateDatabaseAsync(), ["Worker:Jobs:LeaseSeconds"] = "3" };
        WebApplication? a = null, b = null;
        try
        {
            (a, var addressA) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, dataA, settings);
            (b, var addressB) = await Mesh.StartGatewayAsync(["http://127.0.0.1:1"], plugins, dataB, settings);
            using var channelA = Mesh.Channel(addressA);
            using var channelB = Mesh.Channel(addressB);
            var viaA = new AnalysisService.AnalysisServiceClient(channelA);
            var viaB = new AnalysisService.AnalysisServiceClient(channelB);

            var job = await viaA.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 8}""" }, Mesh.As(Mesh.AliceKey));
            var events = new List<JobEvent>();
            using (var call = viaB.WatchJob(new WatchJobRequest { Id = job.Id }, Mesh.As(Mesh.AliceKey)))
            {
                await foreach (var e in call.ResponseStream.ReadAllAsync())
                    events.Add(e);
            }
            var final = events[^1].Finished;
            Assert.True(final.State == JobState.Succeeded, final.Error);
            Assert.Equal(("{\"steps\":8}", 1), (final.Result.SummaryJson, final.Attempts));
            foreach (var client in new[] { viaA, viaB })
            {
                var listed = await client.ListJobsAsync(new ListJobsRequest(), Mesh.As(Mesh.AliceKey));
                Assert.Contains(listed.Jobs, j => j.Id == job.Id && j.State == JobState.Succeeded);
            }
            // The embedded file is not used when a connection string is set.
            Assert.False(File.Exists(Path.Combine(dataA, "jobs", "jobs.db")));

            // A cancel through either replica reaches the job wherever it runs.
            var running = await viaB.SubmitJobAsync(new AnalysisRequest { Plugin = "slow", ParametersJson = """{"steps": 600}""" }, Mesh.As(Mesh.AliceKey));
            Job state;
            do
            {
                await Task.Delay(50);
                state = await viaA.GetJobAsync(new GetJobRequest { Id = running.Id }, Mesh.As(Mesh.AliceKey));
            }
            while (state.State == JobState.Queued);
            await viaA.CancelJobAsync(new CancelJobRequest { Id = running.Id }, Mesh.As(Mesh.AliceKey));
            for (var deadline = DateTime.UtcNow.AddSeconds(30); state.State == JobState.Running && DateTime.UtcNow < deadline; await Task.Delay(100))
                state = await viaB.GetJobAsync(new GetJobRequest { Id = running.Id }, Mesh.As(Mesh.AliceKey));
            Assert.Equal((JobState.Cancelled, "CANCELLED"), (state.State, state.ErrorCode));
        }
        finally
        {
            await Mesh.StopAsync(a, b);
            TempFolders.Delete(plugins, dataA, dataB);
        }
    }
}
