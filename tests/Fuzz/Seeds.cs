using System.Buffers.Binary;
using System.Text;
using Google.Protobuf;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Fuzz;

/// <summary>
/// Small valid inputs for every target, generated here (no third-party files): the starting
/// corpus. Each is a few hundred bytes to a few KB so mutations reach every field quickly.
/// </summary>
public static class Seeds
{
    public static IReadOnlyDictionary<string, IReadOnlyList<(string Name, byte[] Bytes)>> All() => new Dictionary<string, IReadOnlyList<(string, byte[])>>
    {
        ["safetensors"] =
        [
            ("f32-2x3", SafeTensors(("w", "F32", [2, 3]))),
            ("mixed-metadata", SafeTensors([("a", "BF16", [4]), ("b", "I64", [2, 1]), ("c", "BOOL", [3]), ("empty", "F16", [0, 5])], """{"format":"pt","n":"1"}""")),
            ("empty", SafeTensors()),
        ],
        ["llama2c-checkpoint"] =
        [
            ("shared-vocab", Llama2c(dim: 8, hidden: 16, layers: 1, heads: 2, kvHeads: 2, vocab: 16, seqLen: 4)),
            ("gqa-separate-head", Llama2c(dim: 8, hidden: 12, layers: 2, heads: 2, kvHeads: 1, vocab: -10, seqLen: 3)),
        ],
        ["hf-config"] =
        [
            ("gpt2", Utf8("""{"architectures":["GPT2LMHeadModel"],"n_embd":8,"n_head":2,"n_layer":1,"vocab_size":20,"n_positions":16,"n_inner":32,"activation_function":"gelu_new","layer_norm_epsilon":1e-5,"bos_token_id":0,"eos_token_id":0}""")),
            ("llama", Utf8("""{"architectures":["LlamaForCausalLM"],"hidden_size":8,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,"num_hidden_layers":1,"intermediate_size":16,"vocab_size":20,"max_position_embeddings":32,"rms_norm_eps":1e-6,"rope_theta":10000.0,"hidden_act":"silu","rope_scaling":{"rope_type":"default"},"tie_word_embeddings":true}""")),
        ],
        ["tokenizer-json"] =
        [
            ("word-level", Utf8("""{"version":"1.0","added_tokens":[{"id":0,"content":"<unk>","special":true},{"id":1,"content":"<bos>","special":true}],"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<bos>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}]},"model":{"type":"WordLevel","vocab":{"<unk>":0,"<bos>":1,"a":2,"b":3,"hello":4,"world":5},"unk_token":"<unk>"}}""")),
            ("byte-level-bpe", ByteLevelBpeJson(split: false)),
            ("byte-level-bpe-split", ByteLevelBpeJson(split: true)),
        ],
        ["tokenizer-bin"] = [("tiny", Llama2cTokenizer())],
        ["sentencepiece"] = [("tiny-bpe", SentencePieceModel())],
        ["plugin-json"] =
        [
            ("minimal", Utf8("""{ "id": "fuzzed", "assembly": "Fuzzed.Plugin.dll" }""")),
            ("with-type", Utf8("""{ "id": "fuzzed", "assembly": "Fuzzed.dll", "type": "Fuzzed.Plugin" }""")),
        ],
        ["sae-lens"] =
        [
            ("current-topk", Targets.JoinSae(Utf8("""{"architecture":"topk","d_in":4,"d_sae":8,"k":2,"dtype":"float32","apply_b_dec_to_input":true,"normalize_activations":"none","metadata":{"hook_name":"blocks.0.hook_resid_post","model_name":"tiny"}}"""), SaeWeights(4, 8))),
            ("legacy-standard", Targets.JoinSae(Utf8("""{"hook_point":"blocks.1.hook_resid_pre","d_in":4,"d_sae":8,"activation_fn_str":"relu","model_name":"tiny","interpmesh_norm_scale":1.5}"""), SaeWeights(4, 8))),
        ],
        ["parameters"] =
        [
            ("steering-like", [0, .. Utf8("""{"mode":"extract","layer":3,"prompts":["a","b"],"coefficients":[1.5,-2],"classifier":{"probe":"p","class":1},"flag":true,"rate":0.5}""")]),
            ("errors", [0, .. Utf8("""{"layer":-1,"extra":1,"prompts":[],"coefficients":[1000],"classifier":{}}""")]),
            ("rows", [1, .. Utf8("""{"rows":[{"text":"x","label":0},{"text":"y","label":"a"},{"label":2}]}""")]),
        ],
        ["model-request"] =
        [
            ("tokenize", [0, .. new TokenizeRequest { Texts = { "Once upon a time", "" } }.ToByteArray()]),
            ("detokenize", [1, .. new DetokenizeRequest { Tokens = { new TokenIds { Ids = { 1, 20, 300 } } } }.ToByteArray()]),
            ("run", [2, .. RunSeed()]),
            ("generate", [3, .. GenerateSeed()]),
        ],
    };

    private static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);

    private static int ElementSize(string dtype) => dtype switch { "F64" or "I64" => 8, "F32" or "I32" => 4, "F16" or "BF16" or "I16" => 2, _ => 1 };

    /// <summary>A safetensors file by hand: 8-byte header length, JSON header, data (deterministic bytes).</summary>
    public static byte[] SafeTensors(params (string Name, string DType, long[] Shape)[] tensors) => SafeTensors(tensors, null);

    public static byte[] SafeTensors((string Name, string DType, long[] Shape)[] tensors, string? metadataJson)
    {
        var header = new StringBuilder("{");
        if (metadataJson is not null)
            header.Append("\"__metadata__\":").Append(metadataJson);
        long offset = 0;
        foreach (var (name, dtype, shape) in tensors)
        {
            long bytes = shape.Aggregate(1L, (a, b) => a * b) * ElementSize(dtype);
            if (header.Length > 1)
                header.Append(',');
            header.Append($"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{string.Join(",", shape)}],\"data_offsets\":[{offset},{offset + bytes}]}}");
            offset += bytes;
        }
        header.Append('}');
        while (header.Length % 8 != 0)
            header.Append(' ');
        var h = Encoding.UTF8.GetBytes(header.ToString());
        var result = new byte[8 + h.Length + offset];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)h.Length);
        h.CopyTo(result, 8);
        for (long i = 0; i < offset; i++)
            result[8 + h.Length + i] = (byte)(i * 7 % 61); // finite floats of every width
        return result;
    }

    /// <summary>A legacy (version 0) llama2.c checkpoint: 7 int32 header fields, then the float32 arrays.</summary>
    public static byte[] Llama2c(int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen)
    {
        int v = Math.Abs(vocab), headSize = dim / heads, kvDim = kvHeads * headSize;
        long floats = (long)v * dim + (long)layers * (dim + dim * dim + 2 * kvDim * dim + dim * dim + dim + 3L * hidden * dim)
            + dim + (long)seqLen * headSize + (vocab > 0 ? 0 : (long)v * dim);
        var result = new byte[28 + floats * 4];
        int[] header = [dim, hidden, layers, heads, kvHeads, vocab, seqLen];
        for (int i = 0; i < 7; i++)
            BinaryPrimitives.WriteInt32LittleEndian(result.AsSpan(i * 4), header[i]);
        for (long i = 0; i < floats; i++)
            BinaryPrimitives.WriteSingleLittleEndian(result.AsSpan((int)(28 + i * 4)), (float)Math.Sin(i) * 0.1f);
        return result;
    }

    /// <summary>A llama2.c tok*.bin: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the 256 byte pieces, then a few merges.</summary>
    public static byte[] Llama2cTokenizer()
    {
        var pieces = new List<(string, float)> { ("<unk>", 0), ("\n<s>\n", 0), ("\n</s>\n", 0) };
        for (int b = 0; b < 256; b++)
            pieces.Add(($"<0x{b:X2}>", 0));
        pieces.AddRange([(" ", -1), ("a", -2), ("b", -3), ("e", -4), ("o", -5), (" a", -6), ("ab", -7), (" ab", -8), ("Once", -9), (" Once", -10)]);
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        w.Write(16);
        foreach (var (piece, score) in pieces)
        {
            var bytes = Encoding.UTF8.GetBytes(piece);
            w.Write(score);
            w.Write(bytes.Length);
            w.Write(bytes);
        }
        w.Flush();
        return ms.ToArray();
    }

    /// <summary>GPT-2 style byte-level BPE tokenizer.json: the byte alphabet for ASCII letters and space, a few merges.</summary>
    public static byte[] ByteLevelBpeJson(bool split)
    {
        var vocab = new List<string>();
        for (char c = 'a'; c <= 'z'; c++)
            vocab.Add(c.ToString());
        vocab.AddRange(["Ġ", "Ċ", "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "<|endoftext|>"]);
        var v = string.Join(",", vocab.Select((t, i) => $"\"{t}\":{i}"));
        string merges = """["h e","l l","he ll","hell o","Ġ w","o r","Ġw or","l d","Ġwor ld"]""";
        string pre = split
            ? """{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\s+|\\w+|[^\\w\\s]+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]}"""
            : """{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}""";
        return Utf8("{\"version\":\"1.0\",\"added_tokens\":[{\"id\":" + (vocab.Count - 1) + ",\"content\":\"<|endoftext|>\",\"special\":true}],\"pre_tokenizer\":" + pre + ",\"post_processor\":{\"type\":\"ByteLevel\"},\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{" + v + "},\"merges\":" + merges + "}}");
    }

    /// <summary>
    /// A SentencePiece ModelProto written field by field: pieces (piece = 1, score = 2, type = 3),
    /// trainer_spec (model_type BPE, unk/bos/eos ids, byte_fallback) and normalizer_spec.
    /// </summary>
    public static byte[] SentencePieceModel()
    {
        using var ms = new MemoryStream();
        var output = new CodedOutputStream(ms);
        void Piece(string piece, float score, int type)
        {
            using var inner = new MemoryStream();
            var p = new CodedOutputStream(inner);
            p.WriteTag(1, WireFormat.WireType.LengthDelimited);
            p.WriteString(piece);
            p.WriteTag(2, WireFormat.WireType.Fixed32);
            p.WriteFloat(score);
            p.WriteTag(3, WireFormat.WireType.Varint);
            p.WriteInt32(type);
            p.Flush();
            output.WriteTag(1, WireFormat.WireType.LengthDelimited);
            output.WriteBytes(ByteString.CopyFrom(inner.ToArray()));
        }
        // Types: NORMAL 1, UNKNOWN 2, CONTROL 3, BYTE 6.
        Piece("<unk>", 0, 2);
        Piece("<s>", 0, 3);
        Piece("</s>", 0, 3);
        for (int b = 0; b < 256; b++)
            Piece($"<0x{b:X2}>", 0, 6);
        string[] normal = ["▁", "a", "b", "e", "h", "l", "o", "n", "c", "▁a", "ab", "he", "ll", "hell", "hello", "▁hello", "On", "Once"];
        for (int i = 0; i < normal.Length; i++)
            Piece(normal[i], -i - 1, 1);

        using (var trainer = new MemoryStream())
        {
            var t = new CodedOutputStream(trainer);
            t.WriteTag(3, WireFormat.WireType.Varint); // model_type
            t.WriteInt32(2); // BPE
            t.WriteTag(4, WireFormat.WireType.Varint); // vocab_size
            t.WriteInt32(3 + 256 + normal.Length);
            t.WriteTag(35, WireFormat.WireType.Varint); // byte_fallback
            t.WriteBool(true);
            t.WriteTag(40, WireFormat.WireType.Varint); // unk_id
            t.WriteInt32(0);
            t.WriteTag(41, WireFormat.WireType.Varint); // bos_id
            t.WriteInt32(1);
            t.WriteTag(42, WireFormat.WireType.Varint); // eos_id
            t.WriteInt32(2);
            t.WriteTag(43, WireFormat.WireType.Varint); // pad_id
            t.WriteInt32(-1);
            t.Flush();
            output.WriteTag(2, WireFormat.WireType.LengthDelimited);
            output.WriteBytes(ByteString.CopyFrom(trainer.ToArray()));
        }
        using (var normalizer = new MemoryStream())
        {
            var n = new CodedOutputStream(normalizer);
            n.WriteTag(1, WireFormat.WireType.LengthDelimited);
            n.WriteString("identity");
            n.WriteTag(3, WireFormat.WireType.Varint); // add_dummy_prefix
            n.WriteBool(true);
            n.WriteTag(4, WireFormat.WireType.Varint); // remove_extra_whitespaces
            n.WriteBool(false);
            n.WriteTag(5, WireFormat.WireType.Varint); // escape_whitespaces
            n.WriteBool(true);
            n.Flush();
            output.WriteTag(3, WireFormat.WireType.LengthDelimited);
            output.WriteBytes(ByteString.CopyFrom(normalizer.ToArray()));
        }
        output.Flush();
        return ms.ToArray();
    }

    private static byte[] SaeWeights(int dIn, int dSae) => SafeTensors(("W_enc", "F32", [dIn, dSae]), ("b_enc", "F32", [dSae]), ("W_dec", "F32", [dSae, dIn]), ("b_dec", "F32", [dIn]));

    private static byte[] RunSeed()
    {
        var request = new RunRequest
        {
            Inputs = { new Input { Text = "Once upon" }, new Input { Tokens = new TokenIds { Ids = { 1, 2, 3 } } } },
            Captures =
            {
                new Capture { Hooks = { "blocks.0.hook_resid_post" }, Positions = new PositionSelection { Last = true } },
                new Capture { Hooks = { "blocks.*.attn.hook_pattern" }, Dtype = DType.Bfloat16, Reduction = Reduction.Mean, Positions = new PositionSelection { Indices = new TokenIds { Ids = { 0, -1 } } } },
            },
            Interventions = { new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.Scale, Scale = 2 } },
        };
        return request.ToByteArray();
    }

    private static byte[] GenerateSeed()
    {
        var value = new Tensor { Dtype = DType.Float32, Shape = { 64 }, Data = ByteString.CopyFrom(new byte[64 * 4]) };
        var request = new GenerateRequest
        {
            Prompts = { new Input { Text = "Once" } },
            MaxNewTokens = 4,
            Sampling = new SamplingParameters { Temperature = 0.8, TopK = 5, TopP = 0.9, Seed = 3 },
            Interventions = { new Intervention { Hook = "blocks.0.hook_resid_post", Op = InterventionOp.Add, Value = value } },
            Captures = { new Capture { Hooks = { "blocks.1.hook_resid_post" } } },
        };
        return request.ToByteArray();
    }
}
