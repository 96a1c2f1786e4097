using System.Net.Http;
using System.Text.Json;
using InterpMesh.ModelService.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace InterpMesh.Cli.Tests;

/// <summary>A ModelService on a loopback port, as `interpmesh serve` runs it.</summary>
public sealed class LoopbackServer : IAsyncLifetime
{
    private WebApplication? app;

    public string Url { get; private set; } = "";

    public async Task InitializeAsync()
    {
        app = ModelServiceApp.Build([], b => b.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ModelService:ModelPath"] = RepoPaths.Models("stories260K/stories260K.bin"),
            ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
            ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
            ["Logging:LogLevel:Default"] = "Warning",
        }));
        await app.StartAsync();
        await app.Services.GetRequiredService<ModelHost>().WhenLoaded;
        Url = app.Urls.First();
    }

    public async Task DisposeAsync()
    {
        if (app is not null)
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}

/// <summary>`--server URL` gives the same JSON as local mode.</summary>
public sealed class RemoteModeTests(LoopbackServer server) : IClassFixture<LoopbackServer>
{
    private static readonly string Model = RepoPaths.Models("stories260K/stories260K.bin");

    [Fact]
    public void Info_matches_local_mode()
    {
        var local = CliRunner.Run("info", "--model", Model, "--json").Json;
        var remote = CliRunner.Run("info", "--server", server.Url, "--json");
        Assert.True(remote.ExitCode == 0, remote.Stderr);
        foreach (var key in new[] { "architecture", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "vocab_size", "context_length", "dtype", "bos_token_id", "eos_token_id", "hooks", "hook_shapes" })
            Assert.Equal(local.GetProperty(key).GetRawText(), remote.Json.GetProperty(key).GetRawText());
    }

    [Fact]
    public void Tokenize_generate_and_forward_match_local_mode()
    {
        string[][] commands =
        [
            ["tokenize", "--text", "Once upon a time", "--json"],
            ["generate", "--prompt", "Once upon a time", "--max-new-tokens", "55", "--stop-ids", "1", "--json"],
            ["generate", "--prompt-ids", "1,403", "--max-new-tokens", "12", "--temperature", "0.9", "--top-k", "20", "--seed", "5", "--stop-ids", "none", "--json"],
            ["forward", "--ids", "1,403,407,261,378", "--logits", "all", "--json"],
        ];
        foreach (var command in commands)
        {
            var local = CliRunner.Run([.. command, "--model", Model]);
            var remote = CliRunner.Run([.. command, "--server", server.Url]);
            Assert.True(remote.ExitCode == 0, remote.Stderr);
            Assert.Equal(local.Stdout, remote.Stdout);
        }
    }

    [Fact]
    public void Server_errors_come_back_as_one_clear_line()
    {
        var r = CliRunner.Run("forward", "--server", server.Url, "--ids", "1,600", "--json");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("InvalidArgument", r.Stderr);
        Assert.Contains("token id 600", r.Stderr);
        var down = CliRunner.Run("info", "--server", "http://127.0.0.1:1", "--json");
        Assert.Equal(1, down.ExitCode);
        Assert.Contains("unavailable", down.Stderr);
        Assert.Equal(2, CliRunner.Run("info", "--server", "not a url", "--json").ExitCode);
    }
}

/// <summary>`interpmesh serve` as a separate process, as a user starts it.</summary>
public sealed class ServeProcessTests
{

    [Fact]
    public async Task Serve_answers_grpc_and_metrics_on_the_given_ports_until_stopped()
    {
        int grpc = Ports.Free(), metrics = Ports.Free();
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "interpmesh"),
            ["serve", "--model", RepoPaths.Models("stories260K/stories260K.bin"), "--grpc-port", grpc.ToString(), "--metrics-port", metrics.ToString()])
        { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(psi)!;
        try
        {
            // Log lines may come first; wait for the ready line.
            var ready = Task.Run(async () =>
            {
                while (await process.StandardOutput.ReadLineAsync() is { } line)
                {
                    if (line.StartsWith("serving ", StringComparison.Ordinal))
                        return line;
                }
                return null;
            });
            Assert.True(await Task.WhenAny(ready, Task.Delay(60_000)) == ready, "serve did not report ready within 60 s");
            Assert.Contains($"127.0.0.1:{grpc}", await ready);
            var info = CliRunner.Run("info", "--server", $"http://127.0.0.1:{grpc}", "--json");
            Assert.True(info.ExitCode == 0, info.Stderr);
            Assert.Equal("llama2.c", info.Json.GetProperty("architecture").GetString());
            using var http = new HttpClient();
            Assert.Contains("interpmesh_requests_total", await http.GetStringAsync($"http://127.0.0.1:{metrics}/metrics"));
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }
    }
}
