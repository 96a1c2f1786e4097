using System.Text;

namespace InterpMesh.Plugins.Steering.Export;

/// <summary>
/// Writes a llama.cpp control vector: a GGUF v3 file (written from the GGUF specification) with
/// <c>general.architecture = "controlvector"</c>, <c>controlvector.model_hint</c> (string),
/// <c>controlvector.layer_count</c> (int32) and one F32 tensor <c>direction.N</c> [n_embd] per
/// layer, N = block index + 1 (llama.cpp's cvector-generator convention: the direction for the
/// output of block N−1, counting blocks from 0). Little-endian; tensor data aligned to 32 bytes.
/// </summary>
internal static class GgufControlVector
{
    private const uint Magic = 0x46554747; // "GGUF"
    private const uint Version = 3;
    private const uint TypeInt32 = 5;
    private const uint TypeString = 8;
    private const uint TensorF32 = 0;
    private const int Alignment = 32;

    public static byte[] Write(string modelHint, int layerCount, IReadOnlyDictionary<int, float[]> directions)
    {
        using var stream = new MemoryStream();
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        void Str(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            w.Write((ulong)bytes.Length);
            w.Write(bytes);
        }
        var layers = directions.Keys.Order().ToList();
        w.Write(Magic);
        w.Write(Version);
        w.Write((ulong)layers.Count);
        w.Write(3UL);
        Str("general.architecture");
        w.Write(TypeString);
        Str("controlvector");
        Str("controlvector.model_hint");
        w.Write(TypeString);
        Str(modelHint);
        Str("controlvector.layer_count");
        w.Write(TypeInt32);
        w.Write(layerCount);
        ulong offset = 0;
        foreach (int layer in layers)
        {
            var v = directions[layer];
            Str($"direction.{layer + 1}");
            w.Write(1u);
            w.Write((ulong)v.Length);
            w.Write(TensorF32);
            w.Write(offset);
            offset += Pad((ulong)v.Length * 4);
        }
        w.Flush();
        while (stream.Length % Alignment != 0)
            w.Write((byte)0);
        foreach (int layer in layers)
        {
            foreach (var x in directions[layer])
                w.Write(x);
            while (stream.Length % Alignment != 0)
                w.Write((byte)0);
        }
        w.Flush();
        return stream.ToArray();
    }

    private static ulong Pad(ulong n) => (n + Alignment - 1) / Alignment * Alignment;
}
