using System.Buffers.Binary;
using System.Text;
using FsCheck;
using FsCheck.Fluent;
using InterpMesh.Fuzz;

namespace InterpMesh.Fuzz.Tests;

/// <summary>
/// Bounded FsCheck properties per parser: mutated seeds and structured lying headers are accepted
/// or refused with the documented exception, and never allocate more than the harness's bound
/// (a constant plus a multiple of the input size).
/// </summary>
public sealed class ParserProperties
{
    private static void Holds<T>(Arbitrary<T> inputs, Action<T> property, int cases) =>
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(cases), Prop.ForAll(inputs, property));

    private static void NotABug(FuzzTarget target, byte[] input)
    {
        var outcome = target.Execute(input);
        if (outcome.Verdict == Verdict.Bug)
            throw new InvalidOperationException($"{target.Name}: {outcome} (input {Convert.ToHexString(input.AsSpan(0, Math.Min(input.Length, 256)))})");
    }

    public static TheoryData<string> TargetNames() => [.. Targets.All.Select(t => t.Name)];

    [Theory]
    [MemberData(nameof(TargetNames))]
    public void Mutated_seeds_are_accepted_or_refused_cleanly(string name)
    {
        var target = Targets.Get(name);
        var seeds = Seeds.All()[name].Select(s => s.Bytes).ToArray();
        var inputs = (from pick in Gen.Choose(0, seeds.Length - 1)
                      from rng in Gen.Choose(0, int.MaxValue)
                      select new Mutator(new Random(rng)).Mutate(seeds[pick], seeds[(pick + 1) % seeds.Length]))
            .ToArbitrary();
        Holds(inputs, input => NotABug(target, input), cases: 150);
    }

    private static readonly long[] EdgeLongs = [0, 1, 2, 3, 4, 8, 1000, 1L << 20, 1L << 31, 1L << 40, 1_000_000_000_000, long.MaxValue, -1, long.MinValue];

    private static Gen<long> EdgeOrSmall() => Gen.OneOf(Gen.Elements(EdgeLongs), Gen.Choose(0, 16).Select(i => (long)i));

    [Fact]
    public void Safetensors_headers_with_lying_shapes_and_offsets_are_refused_before_allocating()
    {
        var entry = from dtype in Gen.Elements("F32", "F16", "BF16", "I64", "BOOL", "U8", "F8", "")
                    from rank in Gen.Choose(0, 4)
                    from shape in Gen.ArrayOf(EdgeOrSmall(), rank)
                    from begin in EdgeOrSmall()
                    from end in EdgeOrSmall()
                    select (dtype, shape, begin, end);
        var files = from entries in Gen.ListOf(entry, 3)
                    from dataLength in Gen.Choose(0, 64)
                    select SafeTensorsWithHeader(entries, dataLength);
        var target = Targets.Get("safetensors");
        Holds(files.ToArbitrary(), file => NotABug(target, file), cases: 300);
    }

    private static byte[] SafeTensorsWithHeader(IEnumerable<(string DType, long[] Shape, long Begin, long End)> entries, int dataLength)
    {
        var json = "{" + string.Join(",", entries.Select((e, i) =>
            $"\"t{i}\":{{\"dtype\":\"{e.DType}\",\"shape\":[{string.Join(",", e.Shape)}],\"data_offsets\":[{e.Begin},{e.End}]}}")) + "}";
        var header = Encoding.UTF8.GetBytes(json);
        var file = new byte[8 + header.Length + dataLength];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)header.Length);
        header.CopyTo(file, 8);
        return file;
    }

    private static readonly int[] EdgeInts = [0, 1, 2, 4, 8, 16, 3, -1, -2, int.MaxValue, int.MinValue, 1 << 16, 1 << 30, 46341, -46341, 32000];

    [Fact]
    public void Llama2c_headers_with_any_fields_are_refused_unless_the_file_holds_every_float()
    {
        var headers = from fields in Gen.ArrayOf(Gen.OneOf(Gen.Elements(EdgeInts), Gen.Choose(1, 8)), 7)
                      from floats in Gen.Choose(0, 2048)
                      select (fields, floats);
        var target = Targets.Get("llama2c-checkpoint");
        Holds(headers.ToArbitrary(), h =>
        {
            var file = new byte[28 + h.floats * 4];
            for (int i = 0; i < 7; i++)
                BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(i * 4), h.fields[i]);
            NotABug(target, file);
        }, cases: 300);
    }

    [Fact]
    public void Llama2c_tokenizer_length_fields_that_lie_are_refused()
    {
        var seed = Seeds.Llama2cTokenizer();
        var edits = from maxLen in Gen.Elements(EdgeInts)
                    from at in Gen.Choose(0, seed.Length - 4)
                    from value in Gen.Elements(EdgeInts)
                    select (maxLen, at, value);
        var target = Targets.Get("tokenizer-bin");
        Holds(edits.ToArbitrary(), e =>
        {
            var file = (byte[])seed.Clone();
            BinaryPrimitives.WriteInt32LittleEndian(file, e.maxLen);
            BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(e.at), e.value);
            NotABug(target, file);
        }, cases: 200);
    }

    [Fact]
    public void Json_numbers_of_every_kind_in_configs_are_refused_by_name()
    {
        // Each integer field of config.json and cfg.json takes a value of the wrong JSON type or range.
        string[] values = ["-1", "0", "1.5", "1e400", "2147483648", "\"8\"", "null", "true", "[]", "{}", "-2147483649", "99999999999999999999"];
        string[] hfFields = ["n_embd", "n_head", "n_layer", "vocab_size", "n_positions", "n_inner", "n_ctx", "bos_token_id", "layer_norm_epsilon", "tie_word_embeddings", "architectures"];
        string[] saeFields = ["d_in", "d_sae", "k", "architecture", "hook_name", "model_name", "normalize_activations", "interpmesh_norm_scale", "apply_b_dec_to_input", "activation_fn_kwargs", "metadata"];
        var hf = Targets.Get("hf-config");
        var sae = Targets.Get("sae-lens");
        var cases = from field in Gen.Elements(hfFields.Concat(saeFields).ToArray())
                    from value in Gen.Elements(values)
                    select (field, value);
        Holds(cases.ToArbitrary(), c =>
        {
            NotABug(hf, Encoding.UTF8.GetBytes($$"""{"architectures":["GPT2LMHeadModel"],"n_embd":8,"n_head":2,"n_layer":1,"vocab_size":20,"n_positions":16,"{{c.field}}":{{c.value}}}"""));
            var cfg = Encoding.UTF8.GetBytes($$"""{"d_in":4,"d_sae":8,"hook_name":"blocks.0.hook_resid_post","{{c.field}}":{{c.value}}}""");
            NotABug(sae, Targets.JoinSae(cfg, Seeds.SafeTensors(("W_enc", "F32", [4, 8]), ("b_enc", "F32", [8]), ("W_dec", "F32", [8, 4]), ("b_dec", "F32", [4]))));
        }, cases: 200);
    }

    [Fact]
    public void Claims_of_huge_sizes_are_refused_with_little_allocation()
    {
        // A 1e12-byte tensor, a 2^31-entry vocabulary, a 2 GiB piece: refused from the header alone.
        var huge = SafeTensorsWithHeader([("F32", [1_000_000, 250_000], 0, 1_000_000_000_000)], 16);
        var l2c = new byte[28 + 64];
        int[] header = [4096, 11008, 32, 32, 32, int.MaxValue, 2048];
        for (int i = 0; i < 7; i++)
            BinaryPrimitives.WriteInt32LittleEndian(l2c.AsSpan(i * 4), header[i]);
        var tok = Seeds.Llama2cTokenizer();
        BinaryPrimitives.WriteInt32LittleEndian(tok.AsSpan(8), int.MaxValue); // first piece's length
        foreach (var (target, input) in new[] { ("safetensors", huge), ("llama2c-checkpoint", l2c), ("tokenizer-bin", tok) })
        {
            var outcome = Targets.Get(target).Execute(input);
            Assert.True(outcome.Verdict == Verdict.Refused, $"{target}: {outcome}");
            Assert.True(outcome.AllocatedBytes < 4L << 20, $"{target}: refusing took {outcome.AllocatedBytes} bytes of managed allocation");
        }
    }
}
