using InterpMesh.Runtime.Architectures;
using InterpMesh.Runtime.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Loading;

/// <summary>A loaded model: the transformer, its tokenizer (if any) and where it came from.</summary>
public sealed class LoadedModel(Transformer transformer, ITextTokenizer? tokenizer, string source) : IDisposable
{
    public Transformer Transformer { get; } = transformer;
    public ModelConfig Config => Transformer.Config;

    /// <summary>The tokenizer, or null when the checkpoint has none and none was given.</summary>
    public ITextTokenizer? Tokenizer { get; } = tokenizer;

    public string Source { get; } = source;

    /// <summary>The tokenizer, or an error that says how to supply one.</summary>
    public ITextTokenizer RequireTokenizer() => Tokenizer
        ?? throw new InvalidOperationException($"{Source} has no tokenizer; pass one with --tokenizer (tokenizer.json, vocab.json+merges.txt, tokenizer.model or a llama2.c tok*.bin), or give token ids instead of text");

    public void Dispose() => Transformer.Dispose();
}

/// <summary>Loads a model from a path: a Hugging Face folder or a llama2.c <c>.bin</c>.</summary>
public static class ModelLoader
{
    /// <param name="path">A folder with config.json (Hugging Face) or a llama2.c <c>.bin</c> file.</param>
    /// <param name="tokenizerPath">Tokenizer file or folder; by default the model folder (HF), or a
    /// <c>tokenizer.bin</c>/single <c>tok*.bin</c> beside a llama2.c checkpoint.</param>
    /// <param name="dtype">Weight and activation dtype (float32 by default; bfloat16 halves memory).</param>
    /// <param name="device"><c>cpu</c> or <c>cuda</c>/<c>cuda:N</c> (needs the CUDA build, see docs/devices.md).</param>
    public static LoadedModel Load(string path, string? tokenizerPath = null, ScalarType dtype = ScalarType.Float32, string device = "cpu")
    {
        var target = ParseDevice(device);
        // Weights are ordinary tensors even when loaded on a torch thread in inference mode: a
        // gradient request saves them for its backward pass, which inference tensors refuse. They
        // never require grad, and inference-mode forwards read them as before.
        using var normal = inference_mode(false);
        using var noGrad = no_grad();
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"model dtype {dtype} is not supported; use float32, bfloat16 or float16");
        string full = Path.GetFullPath(path);
        ModelConfig config;
        TransformerWeights weights;
        string? defaultTokenizer;
        if (Directory.Exists(full))
        {
            if (!HuggingFaceCheckpoint.IsCheckpointFolder(full))
                throw new ModelFormatException(full, "not a model folder: no config.json (expected a Hugging Face checkpoint folder or a llama2.c .bin file)");
            // Read straight onto the target device: the weights never exist twice.
            (config, weights) = HuggingFaceCheckpoint.Load(full, dtype, target);
            defaultTokenizer = TokenizerLoader.HasTokenizer(full) ? full : null;
        }
        else if (File.Exists(full))
        {
            if (Path.GetFileName(full) == "config.json")
                return Load(Path.GetDirectoryName(full)!, tokenizerPath, dtype, device);
            (config, weights) = Llama2cCheckpoint.Load(full, dtype);
            defaultTokenizer = FindLlama2cTokenizer(full);
        }
        else
        {
            throw new ModelFormatException(full, "no such file or folder");
        }

        if (target.type != DeviceType.CPU && weights.Embed.device_type == DeviceType.CPU)
        {
            var moved = weights.To(target);
            weights.Dispose();
            weights = moved;
        }
        Transformer transformer;
        try
        {
            transformer = new Transformer(config, weights, full);
        }
        catch
        {
            weights.Dispose();
            throw;
        }
        ITextTokenizer? tokenizer = null;
        try
        {
            string? tok = tokenizerPath ?? defaultTokenizer;
            if (tok is not null)
                tokenizer = TokenizerLoader.Load(Path.GetFullPath(tok));
            if (tokenizer is not null && tokenizer.VocabSize > config.VocabSize)
                throw new ModelFormatException(tok!, $"the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary has only {config.VocabSize}");
        }
        catch
        {
            transformer.Dispose();
            throw;
        }
        return new LoadedModel(transformer, tokenizer, full);
    }

    /// <summary>Parses and checks a device name before any weight is read.</summary>
    public static Device ParseDevice(string device)
    {
        if (device == "cpu")
            return CPU;
        if (device == "cuda" || device.StartsWith("cuda:", StringComparison.Ordinal))
        {
            if (!cuda.is_available())
                throw new ArgumentException($"device '{device}' was requested but CUDA is not available in this process: build with -p:InterpMeshDevice=cuda on a machine with an NVIDIA driver (docs/devices.md), or use --device cpu");
            int index = device == "cuda" ? 0 : int.TryParse(device[5..], out int i) && i >= 0 ? i
                : throw new ArgumentException($"device '{device}' is not valid; use cpu, cuda or cuda:N");
            if (index >= cuda.device_count())
                throw new ArgumentException($"device '{device}' does not exist: this machine has {cuda.device_count()} CUDA device(s)");
            return torch.device(DeviceType.CUDA, index);
        }
        throw new ArgumentException($"device '{device}' is not valid; use cpu, cuda or cuda:N");
    }

    private static string? FindLlama2cTokenizer(string checkpoint)
    {
        string dir = Path.GetDirectoryName(checkpoint)!;
        string named = Path.Combine(dir, "tokenizer.bin");
        if (File.Exists(named))
            return named;
        var candidates = Directory.GetFiles(dir, "tok*.bin");
        return candidates.Length == 1 ? candidates[0] : null;
    }
}
