using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Playwright;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// A model service and two gateways in front of it, each with an HTTP/1.1 endpoint for REST/JSON and
/// gRPC-Web: one as deployed by default (no CORS; an analysis worker with the token-stats plugin beside
/// it), one whose CORS lists the origin of a small page this fixture serves on loopback.
/// </summary>
public sealed class RestMeshFixture : IAsyncLifetime
{
    private WebApplication? service;
    private WebApplication? gateway;
    private WebApplication? corsGateway;
    private WebApplication? pageServer;

    public string PluginsPath { get; } = TempFolders.Create("interpmesh-rest-plugins-");
    public string DataPath { get; } = TempFolders.Create("interpmesh-rest-data-");
    public string CorsDataPath { get; } = TempFolders.Create("interpmesh-rest-cors-");
    public int WebPort { get; } = Ports.Free();
    public int CorsWebPort { get; } = Ports.Free();
    public int PagePort { get; } = Ports.Free();
    public int MetricsPort { get; } = Ports.Free();

    /// <summary>The CORS gateway's Gateway:MaxRequestBytes (the default gateway keeps 64 MiB).</summary>
    public int MaxRequestBytes => 4096;

    /// <summary>The default gateway's REST/gRPC-Web address (HTTP/1.1).</summary>
    public string WebUrl => $"http://127.0.0.1:{WebPort}";

    /// <summary>The CORS gateway's REST/gRPC-Web address.</summary>
    public string CorsWebUrl => $"http://127.0.0.1:{CorsWebPort}";

    /// <summary>The page's origin (listed in the CORS gateway's Gateway:Cors:Origins).</summary>
    public string PageOrigin => $"http://127.0.0.1:{PagePort}";

    /// <summary>A gRPC (HTTP/2) channel to the default gateway: the independent path the REST answers are compared with.</summary>
    public Grpc.Net.Client.GrpcChannel Channel { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var (tokenStats, _, _) = await PluginBuilds.OutputsAsync();
        TestPlugins.Copy(tokenStats, Path.Combine(PluginsPath, "token-stats"));
        string address;
        (service, address) = await Mesh.StartModelServiceAsync(RepoPaths.Models("stories260K/stories260K.bin"));
        string grpc;
        var settings = Web(WebPort);
        settings["Kestrel:Endpoints:Metrics:Url"] = $"http://127.0.0.1:{MetricsPort}";
        settings["Kestrel:Endpoints:Metrics:Protocols"] = "Http1";
        (gateway, grpc) = await Mesh.StartGatewayAsync([address], PluginsPath, DataPath, settings: settings);
        Channel = Mesh.Channel(grpc);
        var cors = Web(CorsWebPort);
        cors["Gateway:Cors:Origins:0"] = PageOrigin;
        cors["Gateway:MaxRequestBytes"] = MaxRequestBytes.ToString(System.Globalization.CultureInfo.InvariantCulture);
        (corsGateway, _) = await Mesh.StartGatewayAsync([address], PluginsPath, CorsDataPath, settings: cors, startWorker: false);
        pageServer = await StartPageServerAsync(PagePort);
    }

    /// <summary>An HTTP/1.1 endpoint named Web (it sorts after Grpc, which stays the address Mesh reports).</summary>
    private static Dictionary<string, string?> Web(int port) => new()
    {
        ["Kestrel:Endpoints:Web:Url"] = $"http://127.0.0.1:{port}",
        ["Kestrel:Endpoints:Web:Protocols"] = "Http1",
    };

    private static async Task<WebApplication> StartPageServerAsync(int port)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, port));
        builder.Logging.ClearProviders();
        var app = builder.Build();
        app.MapGet("/", () => Results.Content(RestTests.Page, "text/html"));
        await app.StartAsync();
        return app;
    }

    public async Task DisposeAsync()
    {
        Channel?.Dispose();
        await Mesh.StopAsync(pageServer, corsGateway, gateway, service);
        TempFolders.Delete(PluginsPath, DataPath, CorsDataPath);
    }
}

/// <summary>
/// Issue #23's REST/JSON and gRPC-Web: the curl examples of docs/rest.md, run as written with the real
/// curl against a real gateway and model service, answer what gRPC answers for the same request (the
/// same message, parsed from the JSON); bad input gets the HTTP status of its gRPC status and the
/// server's message; CORS is off unless configured; a page in Debian's headless Chromium calls
/// GetModelInfo over gRPC-Web.
/// </summary>
[Collection("gateways")]
public sealed partial class RestTests(RestMeshFixture mesh) : IClassFixture<RestMeshFixture>
{
    private const string Curl = "/usr/bin/curl";
    private static readonly JsonParser Parser = new(JsonParser.Settings.Default);

    private Contracts.V1.ModelService.ModelServiceClient Models => new(mesh.Channel);

    private AnalysisService.AnalysisServiceClient Analyses => new(mesh.Channel);

    [GeneratedRegex(@"<!-- curl: (?<name>[a-z-]+) -->\s*```sh\n(?<body>.*?)```", RegexOptions.Singleline)]
    private static partial Regex CurlBlock();

    /// <summary>The docs' example <paramref name="name"/>, as written.</summary>
    private static string Example(string name)
    {
        var blocks = CurlBlock().Matches(File.ReadAllText(Path.Combine(RepoPaths.Root, "docs", "rest.md")))
            .ToDictionary(m => m.Groups["name"].Value, m => m.Groups["body"].Value, StringComparer.Ordinal);
        Assert.True(blocks.TryGetValue(name, out var body), $"docs/rest.md has no curl example '{name}' (it has {string.Join(", ", blocks.Keys)})");
        Assert.Contains("curl ", body, StringComparison.Ordinal);
        return body;
    }

    /// <summary>
    /// Runs a docs example with bash (pipefail) and the real curl, the gateway's web address and
    /// <paramref name="key"/> in the variables the docs set (<c>INTERPMESH_URL</c>, <c>INTERPMESH_API_KEY</c>).
    /// </summary>
    private async Task<string> RunExample(string script, string key = Mesh.AdminKey)
    {
        Assert.True(File.Exists(Curl), "curl is missing: apt-get install curl");
        var start = new ProcessStartInfo("/bin/bash", ["-o", "pipefail", "-c", script])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.Environment["PATH"] = "/usr/bin:/bin";
        start.Environment["INTERPMESH_URL"] = mesh.WebUrl;
        start.Environment["INTERPMESH_API_KEY"] = key;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        Assert.True(process.ExitCode == 0, $"the example failed ({process.ExitCode}): {await stderr}\n{script}");
        return await stdout;
    }

    /// <summary>An error example's answer: the JSON body and the status curl's <c>-w</c> printed last.</summary>
    private async Task<(int Status, int Code, string Message)> RunErrorExample(string name)
    {
        string output = (await RunExample(Example(name))).TrimEnd();
        int split = output.LastIndexOf('\n');
        Assert.True(split > 0, $"'{name}' printed no status line: {output}");
        var status = output[(split + 1)..];
        Assert.StartsWith("HTTP ", status, StringComparison.Ordinal);
        var body = JsonDocument.Parse(output[..split]).RootElement;
        string message = body.GetProperty("message").GetString()!;
        // What a client may see: no server paths, no stack traces.
        Assert.DoesNotContain(RepoPaths.Root, message, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", message, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", message, StringComparison.Ordinal);
        return (int.Parse(status[5..], System.Globalization.CultureInfo.InvariantCulture), body.GetProperty("code").GetInt32(), message);
    }

    /// <summary>The error a streamed gRPC call ends with (the test fails if it ends without one).</summary>
    private static Task<RpcException> StreamFailure<T>(Func<AsyncServerStreamingCall<T>> start) =>
        Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = start();
            await foreach (var _ in call.ResponseStream.ReadAllAsync())
            {
            }
        });

    [Fact]
    public async Task Model_info_over_curl_is_the_message_grpc_returns()
    {
        var json = await RunExample(Example("model-info"));
        var rest = Parser.Parse<ModelInfo>(json);
        var grpc = await Models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.AdminKey));
        Assert.Equal(grpc, rest);
        Assert.Equal("llama2.c", rest.Architecture);
        Assert.True(rest.Hooks.Count > 10 && rest.NLayers > 0);
        // Enums by name, as docs/rest.md says.
        Assert.Contains("\"DTYPE_FLOAT32\"", json, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Tokenize_over_curl_is_the_message_grpc_returns()
    {
        var rest = Parser.Parse<TokenizeResponse>(await RunExample(Example("tokenize")));
        var grpc = await Models.TokenizeAsync(new TokenizeRequest { Texts = { "Once upon a time", "The cat" } }, Mesh.As(Mesh.AdminKey));
        Assert.Equal(grpc, rest);
        Assert.Equal(2, rest.Tokens.Count);
        Assert.All(rest.Tokens, t => Assert.True(t.Ids.Count >= 2));
    }

    [Fact]
    public async Task Plugins_over_curl_are_the_list_grpc_returns()
    {
        var rest = Parser.Parse<ListPluginsResponse>(await RunExample(Example("plugins"), Mesh.ReaderKey));
        var grpc = await Analyses.ListPluginsAsync(new ListPluginsRequest(), Mesh.As(Mesh.ReaderKey));
        Assert.Equal(grpc, rest);
        Assert.Contains(rest.Plugins, p => p.Id == "token-stats" && p.Loaded);
    }

    [Fact]
    public async Task A_job_submitted_over_curl_runs_and_reads_back_as_grpc_reads_it()
    {
        var submitted = Parser.Parse<Job>(await RunExample(Example("submit-job"), Mesh.AliceKey));
        Assert.Equal("token-stats", submitted.Plugin);
        Assert.Equal("alice", submitted.Owner);
        Assert.False(string.IsNullOrEmpty(submitted.Id));
        // Watch it to the end over gRPC (the independent path), then read it over REST.
        Job? final = null;
        using var watch = Analyses.WatchJob(new WatchJobRequest { Id = submitted.Id }, Mesh.As(Mesh.AliceKey));
        await foreach (var e in watch.ResponseStream.ReadAllAsync())
        {
            if (e.EventCase == JobEvent.EventOneofCase.Finished)
                final = e.Finished;
        }
        Assert.NotNull(final);
        Assert.True(final.State == JobState.Succeeded, final.Error);

        var get = Example("get-job");
        Assert.Matches(@"(?m)^JOB_ID=\.\.\.", get);
        var script = Regex.Replace(get, @"(?m)^JOB_ID=\.\.\.", $"JOB_ID={submitted.Id}");
        var json = await RunExample(script, Mesh.AliceKey);
        var rest = Parser.Parse<Job>(json);
        var grpc = await Analyses.GetJobAsync(new GetJobRequest { Id = submitted.Id }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(grpc, rest);
        Assert.Equal(JobState.Succeeded, rest.State);
        Assert.Contains("\"JOB_STATE_SUCCEEDED\"", json, StringComparison.Ordinal);
        Assert.Contains("\"tokens\"", rest.Result.SummaryJson, StringComparison.Ordinal);

        // The list (query parameters bound to ListJobsRequest) is the page gRPC lists.
        var listed = Parser.Parse<ListJobsResponse>(await RunExample(Example("list-jobs"), Mesh.AliceKey));
        var grpcList = await Analyses.ListJobsAsync(new ListJobsRequest { Plugin = "token-stats", PageSize = 5 }, Mesh.As(Mesh.AliceKey));
        Assert.Equal(grpcList, listed);
        Assert.Contains(listed.Jobs, j => j.Id == submitted.Id);
        Assert.All(listed.Jobs, j => Assert.Equal("token-stats", j.Plugin));

        // Watching the finished job answers one line: its final record.
        var watchLines = (await RunExample($"JOB_ID={submitted.Id}\n{Example("watch-job")}", Mesh.AliceKey)).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var finishedEvent = Parser.Parse<JobEvent>(Assert.Single(watchLines));
        Assert.Equal(grpc, finishedEvent.Finished);

        // Cancelling the finished job answers its record, as gRPC's CancelJob does.
        var cancel = Example("cancel-job");
        Assert.Contains("$JOB_ID", cancel, StringComparison.Ordinal);
        var cancelled = Parser.Parse<Job>(await RunExample($"JOB_ID={submitted.Id}\n{cancel}", Mesh.AliceKey));
        Assert.Equal(await Analyses.CancelJobAsync(new CancelJobRequest { Id = submitted.Id }, Mesh.As(Mesh.AliceKey)), cancelled);
        Assert.Equal(JobState.Succeeded, cancelled.State);
    }

    [Fact]
    public async Task Artifacts_listed_and_read_over_curl_are_what_grpc_stored()
    {
        // Stored over gRPC (the independent path): a file over two of GetArtifact's 1 MiB chunks and a small one.
        var rng = new Random(11);
        var weights = new byte[2_500_000];
        rng.NextBytes(weights);
        var info = Encoding.UTF8.GetBytes("{\"hook\": \"blocks.0.hook_resid_post\"}");
        var artifacts = new ArtifactService.ArtifactServiceClient(mesh.Channel);
        using (var put = artifacts.PutArtifact(Mesh.As(Mesh.AliceKey)))
        {
            await put.RequestStream.WriteAsync(new ArtifactChunk { Header = new ArtifactInfo
            {
                Name = "probes/rest-example",
                MetadataJson = "{\"kind\": \"probe\"}",
                Files = { new ArtifactFileInfo { Name = "tensors.safetensors", Bytes = weights.Length }, new ArtifactFileInfo { Name = "info.json", Bytes = info.Length } },
            } });
            for (int offset = 0; offset < weights.Length; offset += 1 << 20)
                await put.RequestStream.WriteAsync(new ArtifactChunk { Data = new FileData { File = "tensors.safetensors", Offset = offset, Data = ByteString.CopyFrom(weights, offset, Math.Min(1 << 20, weights.Length - offset)) } });
            await put.RequestStream.WriteAsync(new ArtifactChunk { Data = new FileData { File = "info.json", Data = ByteString.CopyFrom(info) } });
            await put.RequestStream.CompleteAsync();
            await put.ResponseAsync;
        }

        var listed = Parser.Parse<ListArtifactsResponse>(await RunExample(Example("list-artifacts"), Mesh.ReaderKey));
        var grpcList = await artifacts.ListArtifactsAsync(new ListArtifactsRequest { Prefix = "probes/", PageSize = 10 }, Mesh.As(Mesh.ReaderKey));
        Assert.Equal(grpcList, listed);
        var listedInfo = Assert.Single(listed.Artifacts, a => a.Name == "probes/rest-example");
        Assert.Equal(weights.Length, listedInfo.Files.Single(f => f.Name == "tensors.safetensors").Bytes);

        // Read as the docs say, the files written by their one-liner into a fresh folder.
        var get = Example("get-artifact");
        Assert.Matches(@"(?m)^ARTIFACT=\.\.\.", get);
        string folder = Directory.CreateTempSubdirectory("interpmesh-rest-artifact-").FullName;
        try
        {
            var script = $"cd '{folder}'\n" + Regex.Replace(get, @"(?m)^ARTIFACT=\.\.\.", "ARTIFACT=probes/rest-example");
            var printed = await RunExample(script, Mesh.ReaderKey);
            Assert.Contains($"tensors.safetensors {weights.Length}", printed, StringComparison.Ordinal);
            Assert.Equal(weights, await File.ReadAllBytesAsync(Path.Combine(folder, "tensors.safetensors")));
            Assert.Equal(info, await File.ReadAllBytesAsync(Path.Combine(folder, "info.json")));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }

        // The lines themselves are the messages gRPC streams, in the same order.
        var lines = (await RunExample($"curl -s -H \"Authorization: Bearer $INTERPMESH_API_KEY\" \"$INTERPMESH_URL/v1/artifacts/probes/rest-example\"", Mesh.ReaderKey))
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => Parser.Parse<ArtifactChunk>(l)).ToList();
        var grpcChunks = new List<ArtifactChunk>();
        using (var call = artifacts.GetArtifact(new GetArtifactRequest { Name = "probes/rest-example" }, Mesh.As(Mesh.ReaderKey)))
            await foreach (var chunk in call.ResponseStream.ReadAllAsync())
                grpcChunks.Add(chunk);
        Assert.Equal(grpcChunks, lines);
        Assert.True(lines.Count >= 4, $"expected a header and at least three data chunks, got {lines.Count} lines");

        // An unknown name: 404 with the server's message.
        var missing = await RunExample("curl -s -w '\\nHTTP %{http_code}\\n' -H \"Authorization: Bearer $INTERPMESH_API_KEY\" \"$INTERPMESH_URL/v1/artifacts/probes/no-such\"", Mesh.ReaderKey);
        Assert.EndsWith("HTTP 404", missing.TrimEnd(), StringComparison.Ordinal);
        Assert.Contains("probes/no-such", missing, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_metrics_endpoint_serves_metrics_only_not_rest_or_grpc_web()
    {
        using var http = new HttpClient();
        using (var metrics = await http.GetAsync($"http://127.0.0.1:{mesh.MetricsPort}/metrics"))
        {
            Assert.Equal(HttpStatusCode.OK, metrics.StatusCode);
            Assert.Contains("# TYPE", await metrics.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        using var request = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{mesh.MetricsPort}/v1/model/info");
        request.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        using var response = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Contains("serves /metrics only", JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("message").GetString(), StringComparison.Ordinal);
        // The same call on the Web endpoint answers.
        using var web = new HttpRequestMessage(HttpMethod.Get, $"{mesh.WebUrl}/v1/model/info");
        web.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        using var answer = await http.SendAsync(web);
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
    }

    [Fact]
    public async Task Plugin_and_job_lookups_over_rest_answer_as_grpc_and_unknown_ids_are_404_naming_what_exists()
    {
        using var http = new HttpClient();
        async Task<(HttpStatusCode Status, string Body)> Get(string path, string key = Mesh.ReaderKey)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, mesh.WebUrl + path);
            request.Headers.Authorization = new("Bearer", key);
            using var response = await http.SendAsync(request);
            return (response.StatusCode, await response.Content.ReadAsStringAsync());
        }

        var (status, body) = await Get("/v1/plugins/token-stats");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(await Analyses.DescribePluginAsync(new DescribePluginRequest { Id = "token-stats" }, Mesh.As(Mesh.ReaderKey)), Parser.Parse<PluginDescription>(body));

        (status, body) = await Get("/v1/plugins/no-such-plugin");
        Assert.Equal(HttpStatusCode.NotFound, status);
        var grpc = await Assert.ThrowsAsync<RpcException>(() => Analyses.DescribePluginAsync(new DescribePluginRequest { Id = "no-such-plugin" }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
        Assert.Equal(grpc.Status.Detail, JsonDocument.Parse(body).RootElement.GetProperty("message").GetString());
        Assert.Contains("token-stats", grpc.Status.Detail, StringComparison.Ordinal);

        (status, body) = await Get("/v1/jobs/job-0000000000000000");
        Assert.Equal(HttpStatusCode.NotFound, status);
        var missing = await Assert.ThrowsAsync<RpcException>(() => Analyses.GetJobAsync(new GetJobRequest { Id = "job-0000000000000000" }, Mesh.As(Mesh.ReaderKey)).ResponseAsync);
        Assert.Equal(missing.Status.Detail, JsonDocument.Parse(body).RootElement.GetProperty("message").GetString());

        // The model header picks the model as for gRPC: naming the only model is the default.
        using var named = new HttpRequestMessage(HttpMethod.Get, $"{mesh.WebUrl}/v1/model/info");
        named.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        named.Headers.Add(Contracts.Headers.Model, "tiny");
        using var answer = await http.SendAsync(named);
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        Assert.Equal(await Models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey)), Parser.Parse<ModelInfo>(await answer.Content.ReadAsStringAsync()));
    }

    /// <summary>gRPC-Web's base64 text mode through the forwarder, from a non-browser client (no CORS involved).</summary>
    [Fact]
    public async Task Grpc_web_text_reaches_the_forwarded_model_service()
    {
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(HttpMethod.Post, $"{mesh.WebUrl}/interpmesh.v1.ModelService/Tokenize");
        var message = new TokenizeRequest { Texts = { "Once upon a time" } }.ToByteArray();
        var framed = new byte[5 + message.Length];
        BinaryPrimitives.WriteUInt32BigEndian(framed.AsSpan(1), (uint)message.Length);
        message.CopyTo(framed, 5);
        request.Content = new StringContent(Convert.ToBase64String(framed));
        request.Content.Headers.ContentType = new("application/grpc-web-text");
        request.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        request.Headers.Add("x-grpc-web", "1");
        // As grpc-web's text clients send it: the answer is base64 too only when asked for.
        request.Headers.Add("Accept", "application/grpc-web-text");
        using var response = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        // The body is base64 of frames, possibly several base64 runs back to back (each padded).
        string text = await response.Content.ReadAsStringAsync();
        Assert.Equal("application/grpc-web-text", response.Content.Headers.ContentType?.MediaType);
        var bytes = new List<byte>();
        foreach (Match run in Regex.Matches(text, "[A-Za-z0-9+/]+={0,2}"))
            bytes.AddRange(Convert.FromBase64String(run.Value));
        var all = bytes.ToArray();
        int length = (int)BinaryPrimitives.ReadUInt32BigEndian(all.AsSpan(1));
        Assert.Equal(0, all[0]);
        var rest = TokenizeResponse.Parser.ParseFrom(all.AsSpan(5, length));
        Assert.Equal(await Models.TokenizeAsync(new TokenizeRequest { Texts = { "Once upon a time" } }, Mesh.As(Mesh.ReaderKey)), rest);
        Assert.Equal(0x80, all[5 + length]);
        Assert.Contains("grpc-status: 0", Encoding.ASCII.GetString(all, 10 + length, all.Length - 10 - length), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_run_over_curl_decodes_with_the_python_one_liner_to_the_logits_grpc_returns()
    {
        var decoded = JsonDocument.Parse(await RunExample(Example("run"), Mesh.AliceKey)).RootElement;
        // The same request over gRPC.
        var request = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last }, Loss = true };
        request.Inputs.Add(new Input { Text = "Once upon a time" });
        RunResult? result = null;
        using (var call = Models.Run(request, Mesh.As(Mesh.AliceKey)))
        {
            await foreach (var m in call.ResponseStream.ReadAllAsync())
            {
                if (m.PayloadCase == RunResponse.PayloadOneofCase.Result)
                    result = m.Result;
            }
        }
        Assert.NotNull(result);
        var expected = new float[result.Logits.Data.Length / 4];
        for (int i = 0; i < expected.Length; i++)
            expected[i] = BinaryPrimitives.ReadSingleLittleEndian(result.Logits.Data.Span[(i * 4)..]);

        Assert.Equal(result.Logits.Shape.ToArray(), decoded.GetProperty("shape").EnumerateArray().Select(s => s.ValueKind == JsonValueKind.String ? long.Parse(s.GetString()!, System.Globalization.CultureInfo.InvariantCulture) : s.GetInt64()).ToArray());
        Assert.Equal("DTYPE_FLOAT32", decoded.GetProperty("dtype").GetString());
        var logits = decoded.GetProperty("logits").EnumerateArray().Select(v => v.GetDouble()).ToArray();
        Assert.Equal(expected.Length, logits.Length);
        // One request alone in its forward both times: the same float32 values (Python prints them exactly).
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - logits[i]) <= 1e-5 * Math.Max(1, Math.Abs(expected[i])), $"logit {i}: REST {logits[i]}, gRPC {expected[i]}");
        Assert.Equal(Array.IndexOf(expected, expected.Max()), decoded.GetProperty("argmax").GetInt32());
        Assert.Equal(result.Loss ?? double.NaN, decoded.GetProperty("loss").GetDouble(), 1e-9);
    }

    [Fact]
    public async Task A_generate_over_curl_streams_the_tokens_grpc_generate_returns_and_a_bad_one_is_a_clear_400()
    {
        var printed = JsonDocument.Parse(await RunExample(Example("generate"), Mesh.AliceKey)).RootElement;
        // The same request over gRPC (greedy: the default sampling).
        var request = new GenerateRequest { MaxNewTokens = 8 };
        request.Prompts.Add(new Input { Text = "Once upon a time" });
        var ids = new List<int>();
        var text = new StringBuilder();
        bool final = false;
        using (var call = Models.Generate(request, Mesh.As(Mesh.AliceKey)))
        {
            await foreach (var m in call.ResponseStream.ReadAllAsync())
            {
                if (m.TokenIds.Count == 0)
                    continue;
                ids.Add(m.TokenIds[0]);
                text.Append(m.Texts.Count > 0 ? m.Texts[0] : "");
                final = m.Final;
            }
        }
        Assert.True(final);
        Assert.NotEmpty(ids);
        Assert.Equal(ids, printed.GetProperty("ids").EnumerateArray().Select(v => v.GetInt32()));
        Assert.Equal(text.ToString(), printed.GetProperty("text").GetString());
        Assert.True(printed.GetProperty("final").GetBoolean());

        // Streamed as produced: one JSON line per step, the first carrying the prompt's ids.
        using var http = new HttpClient();
        using var post = new HttpRequestMessage(HttpMethod.Post, $"{mesh.WebUrl}/v1/model/generate")
        {
            Content = new StringContent("""{"prompts": [{"text": "Once upon a time"}], "maxNewTokens": 8}""", Encoding.UTF8, "application/json"),
        };
        post.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Mesh.AliceKey);
        using var answer = await http.SendAsync(post, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        var lines = (await answer.Content.ReadAsStringAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => Parser.Parse<GenerateResponse>(l)).ToList();
        Assert.Equal(ids.Count, lines.Count);
        Assert.Equal(Enumerable.Range(0, lines.Count), lines.Select(l => l.Step));
        Assert.NotEmpty(lines[0].PromptTokens.Single().Ids);

        // A request the model refuses: 400 with the model service's message, the one gRPC gives.
        var (status, code, message) = await RunErrorExample("bad-generate");
        Assert.Equal(400, status);
        Assert.Equal((int)StatusCode.InvalidArgument, code);
        var bad = new GenerateRequest { MaxNewTokens = 0 };
        bad.Prompts.Add(new Input { Text = "Once upon a time" });
        var refused = await StreamFailure(() => Models.Generate(bad, Mesh.As(Mesh.AliceKey)));
        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
        Assert.Equal(refused.Status.Detail, message);
        Assert.Contains("max_new_tokens must be at least 1", message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_input_over_curl_gets_the_http_status_of_its_grpc_status_and_the_servers_message()
    {
        // Unknown model: NOT_FOUND → 404, naming the models the gateway serves; the same message as gRPC.
        var (status, code, message) = await RunErrorExample("unknown-model");
        Assert.Equal(404, status);
        Assert.Equal((int)StatusCode.NotFound, code);
        var grpc = await Assert.ThrowsAsync<RpcException>(() => Models.GetModelInfoAsync(new GetModelInfoRequest(),
            new CallOptions(new Metadata { { "authorization", $"Bearer {Mesh.AdminKey}" }, { Contracts.Headers.Model, "no-such-model" } })).ResponseAsync);
        Assert.Equal(grpc.Status.Detail, message);
        Assert.Contains("unknown model 'no-such-model'", message, StringComparison.Ordinal);
        Assert.Contains("tiny", message, StringComparison.Ordinal);

        // A body that is not JSON: 400, saying where it breaks and what the route takes.
        (status, code, message) = await RunErrorExample("bad-json");
        Assert.Equal(400, status);
        Assert.Equal((int)StatusCode.InvalidArgument, code);
        Assert.StartsWith("the request body is not valid JSON: ", message, StringComparison.Ordinal);
        Assert.Contains("Expected depth to be zero at the end of the JSON payload", message, StringComparison.Ordinal);
        // docs/rest.md shows this answer.
        Assert.Contains($"\"message\":\"{message}\"", File.ReadAllText(Path.Combine(RepoPaths.Root, "docs", "rest.md")), StringComparison.Ordinal);
        Assert.EndsWith("Send a JSON object with the fields of TokenizeRequest (docs/rest.md).", message, StringComparison.Ordinal);

        // A token id the model does not have: the model service's INVALID_ARGUMENT → 400, its message as gRPC has it.
        (status, code, message) = await RunErrorExample("bad-token");
        Assert.Equal(400, status);
        Assert.Equal((int)StatusCode.InvalidArgument, code);
        var run = new RunRequest { Logits = new LogitsRequest { Mode = LogitsRequest.Types.Mode.Last } };
        run.Inputs.Add(new Input { Tokens = new TokenIds { Ids = { 1, 99999 } } });
        var refused = await StreamFailure(() => Models.Run(run, Mesh.As(Mesh.AdminKey)));
        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
        Assert.Equal(refused.Status.Detail, message);
        Assert.Contains("99999", message, StringComparison.Ordinal);

        // No key: UNAUTHENTICATED → 401, saying how to send one.
        (status, code, message) = await RunErrorExample("no-key");
        Assert.Equal(401, status);
        Assert.Equal((int)StatusCode.Unauthenticated, code);
        Assert.Contains("Bearer", message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_rest_body_over_the_request_limit_is_refused_naming_the_setting()
    {
        using var http = new HttpClient();
        string texts = string.Join(", ", Enumerable.Repeat("\"Once upon a time\"", 300));
        using var request = new HttpRequestMessage(HttpMethod.Post, $"{mesh.CorsWebUrl}/v1/model/tokenize")
        {
            Content = new StringContent($$"""{"texts": [{{texts}}]}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        using var response = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.TooManyRequests, response.StatusCode);
        var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal((int)StatusCode.ResourceExhausted, body.GetProperty("code").GetInt32());
        Assert.Equal($"the request body is over {mesh.MaxRequestBytes} bytes, the most this gateway takes (Gateway:MaxRequestBytes); send less, or use gRPC for large requests", body.GetProperty("message").GetString());

        // Under the limit, the same route answers.
        using var small = new HttpRequestMessage(HttpMethod.Post, $"{mesh.CorsWebUrl}/v1/model/tokenize")
        {
            Content = new StringContent("""{"texts": ["Once upon a time"]}""", Encoding.UTF8, "application/json"),
        };
        small.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        using var ok = await http.SendAsync(small);
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task Rest_roles_are_the_grpc_roles()
    {
        // A read key may read the model but not run it: PERMISSION_DENIED → 403, as over gRPC.
        using var http = new HttpClient();
        using var info = new HttpRequestMessage(HttpMethod.Get, $"{mesh.WebUrl}/v1/model/info");
        info.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(info)).StatusCode);
        using var run = new HttpRequestMessage(HttpMethod.Post, $"{mesh.WebUrl}/v1/model/run")
        {
            Content = new StringContent("""{"inputs": [{"text": "Once"}]}""", Encoding.UTF8, "application/json"),
        };
        run.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        using var denied = await http.SendAsync(run);
        Assert.Equal(HttpStatusCode.Forbidden, denied.StatusCode);
        var body = JsonDocument.Parse(await denied.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("key 'reader' lacks the 'analyze' role needed for /interpmesh.v1.ModelService/Run", body.GetProperty("message").GetString());
        using var wrongKey = new HttpRequestMessage(HttpMethod.Get, $"{mesh.WebUrl}/v1/jobs");
        wrongKey.Headers.Authorization = new("Bearer", "not-a-key");
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.SendAsync(wrongKey)).StatusCode);
    }

    [Fact]
    public async Task Without_configured_origins_no_response_carries_cors_headers()
    {
        using var http = new HttpClient();
        // A browser's preflight for a cross-origin gRPC-Web or REST call, and the call itself.
        foreach (var path in new[] { "/interpmesh.v1.ModelService/GetModelInfo", "/v1/model/info", "/interpmesh.v1.AnalysisService/ListPlugins" })
        {
            using var preflight = new HttpRequestMessage(HttpMethod.Options, mesh.WebUrl + path);
            preflight.Headers.Add("Origin", mesh.PageOrigin);
            preflight.Headers.Add("Access-Control-Request-Method", "POST");
            preflight.Headers.Add("Access-Control-Request-Headers", "authorization,content-type,x-grpc-web");
            using var answer = await http.SendAsync(preflight);
            Assert.False(answer.Headers.Contains("Access-Control-Allow-Origin"), $"{path}: preflight answered with CORS headers");
        }
        using var get = new HttpRequestMessage(HttpMethod.Get, $"{mesh.WebUrl}/v1/model/info");
        get.Headers.Add("Origin", mesh.PageOrigin);
        get.Headers.Authorization = new("Bearer", Mesh.ReaderKey);
        using var response = await http.SendAsync(get);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.False(response.Headers.Contains("Access-Control-Allow-Origin"));

        // The CORS gateway answers its listed origin, and only it.
        using var listed = new HttpRequestMessage(HttpMethod.Options, $"{mesh.CorsWebUrl}/interpmesh.v1.ModelService/GetModelInfo");
        listed.Headers.Add("Origin", mesh.PageOrigin);
        listed.Headers.Add("Access-Control-Request-Method", "POST");
        listed.Headers.Add("Access-Control-Request-Headers", "authorization,content-type,x-grpc-web");
        using var allowed = await http.SendAsync(listed);
        Assert.Equal([mesh.PageOrigin], allowed.Headers.GetValues("Access-Control-Allow-Origin"));
        using var other = new HttpRequestMessage(HttpMethod.Options, $"{mesh.CorsWebUrl}/interpmesh.v1.ModelService/GetModelInfo");
        other.Headers.Add("Origin", "http://elsewhere.example");
        other.Headers.Add("Access-Control-Request-Method", "POST");
        using var refused = await http.SendAsync(other);
        Assert.False(refused.Headers.Contains("Access-Control-Allow-Origin"));
    }

    /// <summary>
    /// A page on another loopback origin calls GetModelInfo (forwarded to the model service) and
    /// ListPlugins (the gateway's own) over gRPC-Web with fetch(), in Debian's headless Chromium; the
    /// ModelInfo it gets is the message gRPC returns. Without a key the call fails UNAUTHENTICATED, and
    /// the page can read that status from the response headers. The gateway without configured origins
    /// is out of the page's reach.
    /// </summary>
    [Fact]
    public async Task A_browser_page_calls_GetModelInfo_over_grpc_web()
    {
        const string chromium = "/usr/bin/chromium";
        Assert.True(File.Exists(chromium), "Debian's chromium is missing: `apt-get install chromium` (.ci/run installs it)");
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox", "--disable-gpu"] });
        var page = await browser.NewPageAsync();
        var problems = new List<string>();
        page.PageError += (_, e) => problems.Add($"page error: {e}");
        await page.GotoAsync(mesh.PageOrigin + "/");
        Assert.Equal("grpc-web test page", await page.TitleAsync());

        var answer = await page.EvaluateAsync<JsonElement>("([url, key]) => grpcWeb(url, key)", new[] { $"{mesh.CorsWebUrl}/interpmesh.v1.ModelService/GetModelInfo", Mesh.ReaderKey });
        Assert.Equal(200, answer.GetProperty("http").GetInt32());
        Assert.StartsWith("application/grpc-web", answer.GetProperty("contentType").GetString(), StringComparison.Ordinal);
        Assert.Equal("0", answer.GetProperty("grpcStatus").GetString());
        var info = ModelInfo.Parser.ParseFrom(Convert.FromBase64String(answer.GetProperty("message").GetString()!));
        var grpc = await Models.GetModelInfoAsync(new GetModelInfoRequest(), Mesh.As(Mesh.ReaderKey));
        Assert.Equal(grpc, info);
        // What the page itself read from the protobuf bytes: the architecture (field 1) and the layer count (field 2).
        Assert.Equal("llama2.c", answer.GetProperty("architecture").GetString());
        Assert.Equal(grpc.NLayers, answer.GetProperty("nLayers").GetInt32());

        var plugins = await page.EvaluateAsync<JsonElement>("([url, key]) => grpcWeb(url, key)", new[] { $"{mesh.CorsWebUrl}/interpmesh.v1.AnalysisService/ListPlugins", Mesh.ReaderKey });
        Assert.Equal("0", plugins.GetProperty("grpcStatus").GetString());

        var noKey = await page.EvaluateAsync<JsonElement>("([url, key]) => grpcWeb(url, key)", new[] { $"{mesh.CorsWebUrl}/interpmesh.v1.ModelService/GetModelInfo", "" });
        Assert.Equal(((int)StatusCode.Unauthenticated).ToString(System.Globalization.CultureInfo.InvariantCulture), noKey.GetProperty("grpcStatus").GetString());
        Assert.Contains("API key", Uri.UnescapeDataString(noKey.GetProperty("grpcMessage").GetString()!), StringComparison.Ordinal);
        Assert.Empty(problems);

        // The same call to the gateway without configured origins: the browser refuses it (no CORS answer).
        var blocked = await page.EvaluateAsync<string>("([url, key]) => grpcWeb(url, key).then(r => 'reached: ' + JSON.stringify(r), e => 'blocked: ' + e.message)",
            new[] { $"{mesh.WebUrl}/interpmesh.v1.ModelService/GetModelInfo", Mesh.ReaderKey });
        Assert.StartsWith("blocked: ", blocked, StringComparison.Ordinal);
    }

    /// <summary>
    /// The test page: <c>grpcWeb(url, key)</c> POSTs an empty request message behind gRPC-Web's 5-byte
    /// prefix and splits the answer into the message (flag 0) and the trailer frame (flag 0x80); a call
    /// refused before any message carries its status in the response headers.
    /// </summary>
    internal const string Page = """
        <!doctype html>
        <html><head><title>grpc-web test page</title></head><body>
        <script>
        function varint(b, i) { let v = 0, s = 0; for (;;) { const x = b[i++]; v += (x & 0x7f) * 2 ** s; s += 7; if (x < 0x80) return [v, i]; } }
        function fields(b) {
          const out = {}; let i = 0;
          while (i < b.length) {
            let key; [key, i] = varint(b, i); const f = key >>> 3, w = key & 7;
            if (w === 0) { let v; [v, i] = varint(b, i); out[f] ??= v; }
            else if (w === 2) { let n; [n, i] = varint(b, i); out[f] ??= b.slice(i, i + n); i += n; }
            else if (w === 1) i += 8; else if (w === 5) i += 4; else break;
          }
          return out;
        }
        async function grpcWeb(url, key) {
          const headers = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1' };
          if (key) headers['authorization'] = 'Bearer ' + key;
          const r = await fetch(url, { method: 'POST', headers, body: new Uint8Array([0, 0, 0, 0, 0]) });
          const b = new Uint8Array(await r.arrayBuffer());
          const result = { http: r.status, contentType: r.headers.get('content-type'), grpcStatus: r.headers.get('grpc-status'), grpcMessage: r.headers.get('grpc-message') };
          for (let i = 0; i + 5 <= b.length;) {
            const flag = b[i], n = new DataView(b.buffer, i + 1, 4).getUint32(0); const body = b.slice(i + 5, i + 5 + n); i += 5 + n;
            if (flag === 0) {
              result.message = btoa(String.fromCharCode(...body));
              const f = fields(body);
              result.architecture = f[1] ? new TextDecoder().decode(f[1]) : null;
              result.nLayers = f[2] ?? 0;
            } else if (flag & 0x80) {
              for (const line of new TextDecoder().decode(body).split('\r\n')) {
                const c = line.indexOf(':'); if (c < 0) continue;
                const name = line.slice(0, c).trim().toLowerCase(), value = line.slice(c + 1).trim();
                if (name === 'grpc-status') result.grpcStatus = value;
                if (name === 'grpc-message') result.grpcMessage = value;
              }
            }
          }
          return result;
        }
        </script></body></html>
        """;
}

/// <summary>Gateway:Cors:Origins is checked at start: each entry an exact origin.</summary>
public sealed class CorsOptionsTests
{
    [Fact]
    public void Cors_origins_must_be_exact_origins_and_the_error_says_how_to_write_one()
    {
        var options = new Configuration.GatewayOptions { Auth = { Enabled = false } };
        options.Models["tiny"] = new InterpMesh.Routing.ModelRoute { Endpoints = ["http://127.0.0.1:1"] };
        options.Cors.Origins.AddRange(["https://console.example.org", "http://127.0.0.1:8080", "*", "https://console.example.org/app", "ftp://files.example.org", "console.example.org"]);
        var result = new Configuration.GatewayOptionsValidator().Validate(null, options);
        Assert.True(result.Failed);
        var failures = result.Failures!.ToList();
        foreach (var bad in new[] { "*", "https://console.example.org/app", "ftp://files.example.org", "console.example.org" })
            Assert.Contains($"Gateway:Cors:Origins has '{bad}', which is not an origin; write scheme://host[:port] with no path, e.g. https://console.example.org (no wildcards)", failures);
        Assert.Equal(4, failures.Count);

        options.Cors.Origins.RemoveAll(o => Configuration.CorsOptions.OriginError(o) is not null);
        Assert.Equal(["https://console.example.org", "http://127.0.0.1:8080"], options.Cors.Origins);
        Assert.True(new Configuration.GatewayOptionsValidator().Validate(null, options).Succeeded);
    }
}
