using InterpMesh.Runtime.Execution;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Tests.Execution;

/// <summary>The one dtype-name parser the service settings and the CLI share.</summary>
public sealed class DTypeNamesTests
{
    [Theory]
    [InlineData("float32", ScalarType.Float32)]
    [InlineData("f32", ScalarType.Float32)]
    [InlineData("FP32", ScalarType.Float32)]
    [InlineData("bfloat16", ScalarType.BFloat16)]
    [InlineData(" bf16 ", ScalarType.BFloat16)]
    [InlineData("float16", ScalarType.Float16)]
    [InlineData("fp16", ScalarType.Float16)]
    [InlineData("f16", ScalarType.Float16)]
    public void Names_users_type_parse(string name, ScalarType expected)
    {
        Assert.True(DTypeNames.TryParse(name, out var dtype));
        Assert.Equal(expected, dtype);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("int8")]
    [InlineData("float64")]
    [InlineData("bfloat")]
    public void Other_names_do_not(string? name) => Assert.False(DTypeNames.TryParse(name, out _));

    [Fact]
    public void Canonical_names_round_trip()
    {
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
        {
            Assert.True(DTypeNames.TryParse(DTypeNames.Name(dtype), out var back));
            Assert.Equal(dtype, back);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => DTypeNames.Name(ScalarType.Int64));
    }
}
