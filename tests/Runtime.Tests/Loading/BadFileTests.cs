using System.Text;
using System.Text.Json;
using InterpMesh.Runtime.Loading;
using InterpMesh.Runtime.Tests.Support;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Loading;

/// <summary>Every bad file fails with one clear message naming the file and the problem.</summary>
public sealed class BadFileTests : TorchTest
{
    private static ModelFormatException LoadFails(string path)
    {
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(path).Dispose());
        Assert.Contains(Path.GetFileName(e.FilePath.TrimEnd('/')), e.Message);
        return e;
    }

    private static TempFolder Gpt2Copy()
    {
        var dir = new TempFolder();
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(RepoPaths.Fixture("gpt2-tiny/" + f), dir.File(f));
        return dir;
    }

    [Fact]
    public void Truncated_safetensors_file()
    {
        using var dir = Gpt2Copy();
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        File.WriteAllBytes(dir.File("model.safetensors"), bytes[..(bytes.Length / 2)]);
        var e = LoadFails(dir.Path);
        Assert.Contains("model.safetensors", e.FilePath);
        Assert.Contains("outside", e.Problem);
    }

    [Fact]
    public void Safetensors_header_length_that_lies_is_refused_without_allocating_it()
    {
        using var dir = Gpt2Copy();
        var bytes = File.ReadAllBytes(dir.File("model.safetensors"));
        BitConverter.GetBytes(ulong.MaxValue / 3).CopyTo(bytes, 0);
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        Assert.Contains("header length", LoadFails(dir.Path).Problem);
        BitConverter.GetBytes((ulong)bytes.Length).CopyTo(bytes, 0);
        File.WriteAllBytes(dir.File("model.safetensors"), bytes);
        Assert.Contains("truncated", LoadFails(dir.Path).Problem);
    }

    [Fact]
    public void Safetensors_header_that_is_not_json()
    {
        using var dir = Gpt2Copy();
        var header = Encoding.UTF8.GetBytes("{not json at all");
        File.WriteAllBytes(dir.File("model.safetensors"), [.. BitConverter.GetBytes((ulong)header.Length), .. header]);
        Assert.Contains("not valid JSON", LoadFails(dir.Path).Problem);
    }

    [Fact]
    public void Safetensors_entry_whose_offsets_do_not_match_its_shape()
    {
        using var dir = new TempFolder();
        var header = Encoding.UTF8.GetBytes("""{"w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,16]}}""");
        File.WriteAllBytes(dir.File("x.safetensors"), [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. new byte[16]]);
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorsFile.Open(dir.File("x.safetensors")));
        Assert.Contains("tensor 'w'", e.Message);
        Assert.Contains("needs", e.Message);
    }

    [Fact]
    public void Unknown_architecture()
    {
        using var dir = Gpt2Copy();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("GPT2LMHeadModel", "BertForMaskedLM", StringComparison.Ordinal));
        var e = LoadFails(dir.Path);
        Assert.Contains("config.json", e.FilePath);
        Assert.Contains("unknown architecture 'BertForMaskedLM'", e.Problem);
        Assert.Contains("LlamaForCausalLM", e.Problem);
    }

    [Fact]
    public void Shape_mismatch_between_config_and_weights()
    {
        using var dir = Gpt2Copy();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("\"vocab_size\": 512", "\"vocab_size\": 600", StringComparison.Ordinal));
        var e = LoadFails(dir.Path);
        Assert.Contains("token embedding", e.Problem);
        Assert.Contains("[512, 64]", e.Problem);
        Assert.Contains("[600, 64]", e.Problem);
    }

    [Fact]
    public void Missing_tensor()
    {
        using var dir = Gpt2Copy();
        var all = ReferenceForward.ReadAll(dir.File("model.safetensors"));
        all.Remove("transformer.h.1.mlp.c_fc.weight");
        SafeTensorsFile.Write(dir.File("model.safetensors"), all);
        Assert.Contains("missing tensor 'transformer.h.1.mlp.c_fc.weight'", LoadFails(dir.Path).Problem);
    }

    [Fact]
    public void Missing_weights_file_and_missing_config()
    {
        using var dir = Gpt2Copy();
        File.Delete(dir.File("model.safetensors"));
        Assert.Contains("expected model.safetensors", LoadFails(dir.Path).Problem);
        File.Delete(dir.File("config.json"));
        Assert.Contains("no config.json", LoadFails(dir.Path).Problem);
    }

    [Fact]
    public void Sharded_index_naming_a_missing_or_escaping_shard()
    {
        using var dir = Gpt2Copy();
        File.Delete(dir.File("model.safetensors"));
        File.WriteAllText(dir.File("model.safetensors.index.json"), JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["transformer.wte.weight"] = "model-00001-of-00002.safetensors" } }));
        Assert.Contains("does not exist", LoadFails(dir.Path).Problem);
        File.WriteAllText(dir.File("model.safetensors.index.json"), JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["transformer.wte.weight"] = "../../etc/passwd" } }));
        Assert.Contains("same folder", LoadFails(dir.Path).Problem);
    }

    [Fact]
    public void Truncated_llama2c_checkpoint()
    {
        using var dir = new TempFolder();
        var bytes = File.ReadAllBytes(RepoPaths.Models("stories260K/stories260K.bin"));
        File.WriteAllBytes(dir.File("model.bin"), bytes[..(bytes.Length - 1000)]);
        var e = LoadFails(dir.File("model.bin"));
        Assert.Contains("truncated", e.Problem);
        Assert.Contains("1056540", e.Problem);
    }

    [Fact]
    public void Llama2c_header_with_impossible_dimensions()
    {
        using var dir = new TempFolder();
        var bytes = File.ReadAllBytes(RepoPaths.Models("stories260K/stories260K.bin"));
        BitConverter.GetBytes(int.MaxValue).CopyTo(bytes, 4 * 6); // seq_len
        File.WriteAllBytes(dir.File("a.bin"), bytes);
        Assert.Contains("truncated", LoadFails(dir.File("a.bin")).Problem);
        bytes = File.ReadAllBytes(RepoPaths.Models("stories260K/stories260K.bin"));
        BitConverter.GetBytes(7).CopyTo(bytes, 4 * 3); // n_heads does not divide dim
        File.WriteAllBytes(dir.File("b.bin"), bytes);
        Assert.Contains("inconsistent header", LoadFails(dir.File("b.bin")).Problem);
        File.WriteAllBytes(dir.File("c.bin"), [1, 2, 3]);
        Assert.Contains("shorter than the 28-byte header", LoadFails(dir.File("c.bin")).Problem);
    }

    [Fact]
    public void Path_that_does_not_exist()
    {
        Assert.Contains("no such file", LoadFails("/nonexistent/model-folder").Problem);
    }

    [Fact]
    public void Config_with_wrong_field_types()
    {
        using var dir = Gpt2Copy();
        File.WriteAllText(dir.File("config.json"), File.ReadAllText(dir.File("config.json")).Replace("\"n_layer\": 2", "\"n_layer\": \"two\"", StringComparison.Ordinal));
        Assert.Contains("\"n_layer\" must be an integer", LoadFails(dir.Path).Problem);
        File.WriteAllText(dir.File("config.json"), "[1,2");
        Assert.Contains("cannot read the model config", LoadFails(dir.Path).Problem);
    }
}
