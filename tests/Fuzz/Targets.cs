using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Engine.Requests;
using InterpMesh.AnalysisWorker.Plugins;
using InterpMesh.Gateway.Plugins;
using InterpMesh.ModelService.Configuration;
using InterpMesh.ModelService.Grpc;
using InterpMesh.ModelService.Telemetry;
using InterpMesh.ModelService.Wire;
using InterpMesh.Plugins;
using InterpMesh.Plugins.SAE.Formats;
using InterpMesh.Runtime;
using InterpMesh.Runtime.Execution;
using InterpMesh.Runtime.Generation;
using InterpMesh.Runtime.Hooks;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tokenization;
using Microsoft.Extensions.Options;
using static TorchSharp.torch;

namespace InterpMesh.Fuzz;

/// <summary>
/// The fuzz targets: every parser that reads data from outside the process. File parsers get the
/// bytes through a file in a private scratch folder (they take paths); the others take them as
/// they would arrive. Each names its clean refusal: the exception type its callers turn into a
/// "bad input" answer.
/// </summary>
public static class Targets
{
    private static readonly Lazy<string> ScratchRoot = new(() =>
    {
        var dir = Path.Combine(Path.GetTempPath(), $"interpmesh-fuzz-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        return dir;
    });

    /// <summary>Texts every tokenizer target encodes once it has loaded a tokenizer.</summary>
    public static readonly string[] ProbeTexts = ["", "hello world", " a  b ", "Once upon a time", "é漢字🙂", "<|endoftext|>", "\u0000\uFFFD", "a\nb\tc", "<s></s><unk>", "<0x41>"];

    public static IReadOnlyList<FuzzTarget> All { get; } =
    [
        new("safetensors", "ModelFormatException", SafeTensors, e => e is ModelFormatException),
        new("llama2c-checkpoint", "ModelFormatException", Llama2cCheckpointTarget, e => e is ModelFormatException),
        new("hf-config", "ModelFormatException", HfConfig, e => e is ModelFormatException),
        new("tokenizer-json", "ModelFormatException", TokenizerJson, IsTokenizerRefusal),
        new("tokenizer-bin", "ModelFormatException", TokenizerBin, IsTokenizerRefusal),
        new("sentencepiece", "ModelFormatException", SentencePiece, IsTokenizerRefusal),
        new("plugin-json", "InvalidDataException", PluginJson, e => e is InvalidDataException),
        new("sae-lens", "InvalidParametersException", SaeLens, e => e is InvalidParametersException),
        new("parameters", "JsonException or a non-object (both INVALID_ARGUMENT before validation); Validate itself never throws", Parameters, e => e is JsonException or RefusedException),
        new("model-request", "InvalidProtocolBufferException, or any exception RpcErrors maps to a status other than INTERNAL", ModelRequest, IsRequestRefusal),
    ];

    public static FuzzTarget Get(string name) =>
        All.FirstOrDefault(t => t.Name == name) ?? throw new ArgumentException($"no fuzz target '{name}'; targets: {string.Join(", ", All.Select(t => t.Name))}");

    /// <summary>A refusal the harness itself makes where the real caller refuses (e.g. "parameters_json must be a JSON object").</summary>
    public sealed class RefusedException(string message) : Exception(message);

    private static string Scratch(string relative)
    {
        // One folder per thread: test runners call targets from several threads at once.
        var path = Path.Combine(ScratchRoot.Value, $"t{Environment.CurrentManagedThreadId}", relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        return path;
    }

    private static string WriteScratch(string relative, byte[] data)
    {
        var path = Scratch(relative);
        File.WriteAllBytes(path, data);
        return path;
    }

    // ---- model files ---------------------------------------------------------------------------

    private static void SafeTensors(byte[] input)
    {
        TorchRuntime.Initialize();
        using var file = SafeTensorsFile.Open(WriteScratch("st/model.safetensors", input));
        long total = 0;
        foreach (var entry in file.Entries.Values)
        {
            total += entry.End - entry.Begin;
            using var t = file.Read(entry.Name);
            if (t.numel() * t.ElementSize != entry.End - entry.Begin)
                throw new InvariantViolationException($"tensor '{entry.Name}' read {t.numel() * t.ElementSize} bytes for a {entry.End - entry.Begin}-byte span");
        }
        // Overlapping spans are legal in the format, but each must lie inside the file.
        if (file.Entries.Values.Any(e => e.End > input.Length))
            throw new InvariantViolationException("a tensor span reaches past the end of the file");
        GC.KeepAlive(total);
    }

    private static void Llama2cCheckpointTarget(byte[] input)
    {
        TorchRuntime.Initialize();
        using var scope = NewDisposeScope();
        var (config, weights) = Llama2cCheckpoint.Load(WriteScratch("l2c/model.bin", input), ScalarType.Float32);
        using (weights)
        {
            // Every float the header describes was in the file: nothing larger can have been allocated.
            long floats = (long)config.VocabSize * config.DModel;
            if (floats * 4 > input.Length)
                throw new InvariantViolationException($"embedding of {floats} floats accepted from a {input.Length}-byte file");
        }
    }

    private static void HfConfig(byte[] input)
    {
        var config = HuggingFaceCheckpoint.ReadConfig(WriteScratch("hf/config.json", input));
        if (config.NLayers <= 0 || config.DModel <= 0 || config.VocabSize <= 0)
            throw new InvariantViolationException("ReadConfig accepted a config with non-positive dimensions");
    }

    // ---- tokenizers ----------------------------------------------------------------------------

    private static bool IsTokenizerRefusal(Exception e) => e is ModelFormatException;

    private static void TokenizerJson(byte[] input) => Exercise(TokenizerLoader.Load(WriteScratch("tj/tokenizer.json", input)));

    private static void TokenizerBin(byte[] input) => Exercise(TokenizerLoader.Load(WriteScratch("tb/tok.bin", input)));

    private static void SentencePiece(byte[] input) => Exercise(TokenizerLoader.Load(WriteScratch("sp/tokenizer.model", input)));

    /// <summary>
    /// A loaded tokenizer must encode text, decode what it encoded, and refuse only unknown ids
    /// (ArgumentOutOfRangeException, as <see cref="ITextTokenizer.Decode"/> documents).
    /// </summary>
    public static void Exercise(ITextTokenizer tokenizer)
    {
        if (tokenizer.VocabSize <= 0)
            throw new InvariantViolationException($"a tokenizer with VocabSize {tokenizer.VocabSize} was accepted");
        foreach (var text in ProbeTexts)
        {
            int[] ids;
            try
            {
                ids = tokenizer.Encode(text);
            }
            catch (ArgumentException e) when (tokenizer is WordLevelTokenizer && e.GetType() == typeof(ArgumentException))
            {
                // Documented: a word-level vocabulary without unk_token cannot encode unknown words.
                continue;
            }
            foreach (var id in ids)
            {
                if (id < 0 || id >= tokenizer.VocabSize)
                    throw new InvariantViolationException($"Encode produced id {id} outside the vocabulary of {tokenizer.VocabSize}");
            }
            _ = tokenizer.Decode(ids);
        }
        for (int id = 0; id < Math.Min(tokenizer.VocabSize, 300); id++)
        {
            try
            {
                _ = tokenizer.Decode([id]);
            }
            catch (ArgumentOutOfRangeException)
            {
                // An id inside 0..VocabSize-1 that names no token (a gap in the vocabulary).
            }
        }
        try
        {
            _ = tokenizer.Decode([tokenizer.VocabSize]);
            throw new InvariantViolationException($"Decode accepted id {tokenizer.VocabSize}, one past the vocabulary");
        }
        catch (ArgumentOutOfRangeException)
        {
        }
    }

    // ---- gateway and plugins -------------------------------------------------------------------

    private static void PluginJson(byte[] input)
    {
        var folder = Path.GetDirectoryName(WriteScratch("plugins/fuzzed/plugin.json", input))!;
        var spec = PluginFolder.Read(folder);
        if (spec.Id != "fuzzed")
            throw new InvariantViolationException($"id '{spec.Id}' accepted in folder 'fuzzed'");
        // The assembly is loaded from Path.Combine(folder, assembly): it must be a plain file name.
        if (Path.GetFileName(spec.Assembly) != spec.Assembly || spec.Assembly.Any(c => char.IsControl(c) || c is '/' or '\\')
            || Path.GetDirectoryName(Path.GetFullPath(Path.Combine(folder, spec.Assembly))) != Path.GetFullPath(folder))
            throw new InvariantViolationException($"assembly '{spec.Assembly}' is not a plain file name in the plugin folder");
    }

    /// <summary>Input: a 4-byte little-endian length, that many bytes of cfg.json, the rest is the safetensors file.</summary>
    public static (byte[] Config, byte[] Weights) SplitSae(byte[] input)
    {
        if (input.Length < 4)
            return (input, []);
        int n = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(input), (uint)(input.Length - 4));
        return (input.AsSpan(4, n).ToArray(), input.AsSpan(4 + n).ToArray());
    }

    public static byte[] JoinSae(byte[] config, byte[] weights)
    {
        var result = new byte[4 + config.Length + weights.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(result, (uint)config.Length);
        config.CopyTo(result, 4);
        weights.CopyTo(result, 4 + config.Length);
        return result;
    }

    private static void SaeLens(byte[] input)
    {
        TorchRuntime.Initialize();
        using var scope = NewDisposeScope();
        var (cfg, weights) = SplitSae(input);
        var files = new Dictionary<string, byte[]> { [SaeLensFormat.Config] = cfg, [SaeLensFormat.Weights] = weights };
        var (sae, info) = SaeLensFormat.Read(files, "fuzz");
        if (info.DIn <= 0 || info.DSae <= 0)
            throw new InvariantViolationException($"SAE with d_in {info.DIn}, d_sae {info.DSae} accepted");
        GC.KeepAlive(sae);
    }

    /// <summary>Schemas of the shape built-in plugins declare; the first input byte picks one.</summary>
    public static readonly string[] Schemas =
    [
        """
        { "type": "object", "additionalProperties": false,
          "required": ["layer"],
          "properties": {
            "mode": { "enum": ["extract", "apply"] },
            "layer": { "type": "integer", "minimum": 0, "maximum": 64 },
            "prompts": { "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": 100 },
            "coefficients": { "type": "array", "items": { "type": "number", "minimum": -100, "maximum": 100 } },
            "save_as": { "type": "string" },
            "classifier": { "type": "object", "required": ["probe"], "properties": { "probe": { "type": "string" }, "class": { "type": ["string", "integer"] } } },
            "flag": { "type": "boolean" },
            "rate": { "type": "number", "minimum": 0 } } }
        """,
        """
        { "type": "object", "properties": { "rows": { "type": "array", "items": { "type": "object", "properties": { "text": { "type": "string" }, "label": { "enum": [0, 1, "a", null, true] } } } } } }
        """,
    ];

    private static readonly JsonObject[] ParsedSchemas = [.. Schemas.Select(s => JsonNode.Parse(s)!.AsObject())];

    /// <summary>
    /// Input: one byte choosing the schema, then parameters_json as a client sends it (the proto
    /// string field: UTF-8 on the wire, decoded by protobuf, invalid bytes replaced).
    /// </summary>
    private static void Parameters(byte[] input)
    {
        var schema = ParsedSchemas[input.Length == 0 ? 0 : input[0] % ParsedSchemas.Length];
        string json = input.Length == 0 ? "" : ByteString.CopyFrom(input, 1, input.Length - 1).ToStringUtf8();
        // As JobService.SubmitAsync: parse (refusal: INVALID_ARGUMENT), require an object, validate.
        using var doc = JsonDocument.Parse(string.IsNullOrWhiteSpace(json) ? "{}" : json);
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw new RefusedException("parameters_json must be a JSON object");
        var errors = ParameterValidator.Validate(schema, doc.RootElement);
        if (errors.Any(string.IsNullOrEmpty))
            throw new InvariantViolationException("an empty validation error");
    }

    // ---- model service requests ----------------------------------------------------------------

    private static readonly Lazy<LoadedModel> RequestModel = new(() =>
    {
        TorchRuntime.Initialize();
        return ModelLoader.Load(RepoRoot.Models("stories260K/stories260K.bin"));
    });

    private static readonly InterpMesh.Engine.EngineOptions RequestLimits = new ModelServiceOptions().ToEngineOptions();

    private static bool IsRequestRefusal(Exception e) =>
        e is InvalidProtocolBufferException || RpcErrors.ToRpc(e).StatusCode != StatusCode.Internal;

    /// <summary>Request kinds in the order of the first input byte (mod 4).</summary>
    public static readonly string[] RequestKinds = ["Tokenize", "Detokenize", "Run", "Generate"];

    /// <summary>
    /// Input: one byte choosing the RPC, then the request message as it arrives on the wire. Does
    /// what ModelServiceEndpoint does with a request before the forward pass.
    /// </summary>
    private static void ModelRequest(byte[] input)
    {
        var model = RequestModel.Value;
        int kind = input.Length == 0 ? 0 : input[0] % RequestKinds.Length;
        var body = input.Length == 0 ? [] : input.AsSpan(1).ToArray();
        switch (kind)
        {
            case 0:
                {
                    var request = TokenizeRequest.Parser.ParseFrom(body);
                    foreach (var text in request.Texts)
                        _ = model.RequireTokenizer().Encode(text);
                    break;
                }
            case 1:
                {
                    var request = DetokenizeRequest.Parser.ParseFrom(body);
                    var tokenizer = model.RequireTokenizer();
                    foreach (var ids in request.Tokens)
                    {
                        foreach (var id in ids.Ids)
                        {
                            if (id < 0 || id >= tokenizer.VocabSize)
                                throw new InvalidRequestException($"token id {id} is outside the vocabulary");
                        }
                        _ = tokenizer.Decode(ids.Ids.ToList());
                    }
                    break;
                }
            case 2:
                {
                    var spec = WireMapping.ToSpec(RunRequest.Parser.ParseFrom(body));
                    try
                    {
                        var validated = RequestValidator.Run(model, RequestLimits, spec);
                        validated.Owned.ForEach(t => t.Dispose());
                    }
                    finally
                    {
                        WireMapping.DisposeValues(spec.Interventions);
                    }
                    break;
                }
            default:
                {
                    var spec = WireMapping.ToSpec(GenerateRequest.Parser.ParseFrom(body));
                    try
                    {
                        var validated = RequestValidator.Generate(model, RequestLimits, spec);
                        validated.Owned.ForEach(t => t.Dispose());
                    }
                    finally
                    {
                        WireMapping.DisposeValues(spec.Interventions);
                    }
                    break;
                }
        }
    }
}

/// <summary>Finds the repository (the folder holding InterpMesh.sln) above the running binary.</summary>
public static class RepoRoot
{
    public static string Path { get; } = Find();

    public static string Models(string relative) => System.IO.Path.Combine(Path, "models", relative);

    /// <summary>tests/Fuzz/&lt;kind&gt;/&lt;target&gt; (kind: corpus or crashes): beside the harness, not in a
    /// tests/fuzz folder that would clash with tests/Fuzz on case-insensitive file systems.</summary>
    public static string FuzzData(string kind, string target) => System.IO.Path.Combine(Path, "tests", "Fuzz", kind, target);

    private static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "InterpMesh.sln")))
                return dir.FullName;
        }
        throw new InvalidOperationException($"no InterpMesh.sln above {AppContext.BaseDirectory}; run the fuzz harness from a checkout");
    }
}
