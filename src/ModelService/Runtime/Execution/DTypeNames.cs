using static TorchSharp.torch;

namespace InterpMesh.Runtime.Execution;

/// <summary>
/// The one parser for the weight/activation dtype names users type (settings, CLI flags):
/// float32 (f32, fp32), bfloat16 (bf16), float16 (f16, fp16).
/// </summary>
public static class DTypeNames
{
    /// <summary>The names accepted, for messages.</summary>
    public const string Accepted = "float32, bfloat16 or float16";

    /// <summary>The dtype a name stands for; false for anything else (null and "" are not names).</summary>
    public static bool TryParse(string? name, out ScalarType dtype)
    {
        switch (name?.Trim().ToLowerInvariant())
        {
            case "float32" or "f32" or "fp32":
                dtype = ScalarType.Float32;
                return true;
            case "bfloat16" or "bf16":
                dtype = ScalarType.BFloat16;
                return true;
            case "float16" or "f16" or "fp16":
                dtype = ScalarType.Float16;
                return true;
            default:
                dtype = default;
                return false;
        }
    }

    /// <summary>The canonical name (float32, bfloat16, float16).</summary>
    public static string Name(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a model dtype"),
    };
}
