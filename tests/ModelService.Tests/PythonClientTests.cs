using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Hooks;
using static TorchSharp.torch;

namespace InterpMesh.ModelService.Tests;

/// <summary>A Python client generated from the protos with Debian's grpcio tools streams activations and gets exact bytes.</summary>
public sealed class PythonClientTests(ServerFixture server) : IClassFixture<ServerFixture>
{
    private const string Python = "/usr/bin/python3";

    private static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var psi = new ProcessStartInfo(Python, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void Python_client_streams_activations_bit_identical_to_in_process()
    {
        var check = Run("-c", "import grpc, grpc_tools.protoc");
        Assert.True(check.Code == 0, "Debian's python3-grpcio and python3-grpc-tools are missing: .ci/run installs them (apt-get install python3-grpcio python3-grpc-tools). " + check.Stderr);

        string stubs = Path.Combine(Path.GetTempPath(), "interpmesh-py-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(stubs);
        try
        {
            string protos = Path.Combine(RepoPaths.Root, "protos");
            // Every file under protos/, as a client of another language compiles it: model_service.proto imports
            // authorization.proto (each RPC's required_role option), which imports protobuf's descriptor.proto, and
            // google/api/annotations.proto (the REST routes, docs/rest.md), shipped in protos/google/api.
            var files = Directory.GetFiles(protos, "*.proto", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToArray();
            Assert.Contains(files, f => f.EndsWith(Path.Combine("google", "api", "annotations.proto"), StringComparison.Ordinal));
            Assert.Contains(files, f => f.EndsWith("authorization.proto", StringComparison.Ordinal));
            var gen = Run(["-m", "grpc_tools.protoc", $"-I{protos}", $"--python_out={stubs}", $"--grpc_python_out={stubs}", .. files]);
            Assert.True(gen.Code == 0, "protoc for Python failed: " + gen.Stderr);

            var client = Run(Path.Combine(RepoPaths.Root, "tests/ModelService.Tests/python/client_check.py"), stubs, server.Address);
            Assert.True(client.Code == 0, "the Python client failed: " + client.Stderr);
            var result = JsonDocument.Parse(client.Stdout).RootElement;
            Assert.Equal("llama2.c", result.GetProperty("architecture").GetString());
            Assert.Equal(server.Local.Transformer.Hooks.All.Count, result.GetProperty("hooks").GetInt32());
            Assert.Equal("INVALID_ARGUMENT", result.GetProperty("error").GetProperty("code").GetString());
            Assert.Contains("token id 99999", result.GetProperty("error").GetProperty("details").GetString());

            // The same request in process.
            using var mode = inference_mode();
            using var scope = NewDisposeScope();
            var m = server.Local.Transformer;
            var text = server.Local.RequireTokenizer().Encode("Once upon");
            var (ids, mask) = TokenBatch.Pad([[1, 403, 407, 261, 378], text], PaddingSide.Left);
            var hashes = new Dictionary<string, string>();
            var plan = HookPlan.Build(m.Hooks, [new CaptureRequest(["blocks.*.hook_resid_post"])], null);
            var logits = m.Forward(ids, mask, plan, (h, t) =>
            {
                var bytes = new byte[t.numel() * 4];
                t.contiguous().bytes.CopyTo(bytes);
                hashes[h.Name] = Convert.ToHexStringLower(SHA256.HashData(bytes));
            }, LogitsMode.Last)!;
            var captures = result.GetProperty("captures");
            Assert.Equal(5, captures.EnumerateObject().Count());
            foreach (var (hook, hash) in hashes)
            {
                Assert.Equal(hash, captures.GetProperty(hook).GetProperty("sha256").GetString());
                Assert.Equal([2L, 5, 64], captures.GetProperty(hook).GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()));
            }
            var first = result.GetProperty("first_logits").EnumerateArray().Select(x => x.GetSingle()).ToArray();
            Assert.Equal(logits[0, 0, ..4].data<float>().ToArray(), first);
        }
        finally
        {
            Directory.Delete(stubs, recursive: true);
        }
    }
}
