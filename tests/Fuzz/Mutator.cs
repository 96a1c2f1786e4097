using System.Buffers.Binary;
using System.Text;

namespace InterpMesh.Fuzz;

/// <summary>
/// Mutation-based input generation from a corpus: bit flips, interesting bytes and integers
/// written over length fields, byte and chunk insertion/deletion/duplication, splicing two inputs,
/// and text-aware edits for JSON (numbers replaced with edge values, dictionary tokens inserted).
/// Deterministic for a given <see cref="Random"/>.
/// </summary>
public sealed class Mutator(Random rng, int maxLength = 1 << 16)
{
    private static readonly byte[] InterestingBytes = [0, 1, 0x7F, 0x80, 0xFF, (byte)'"', (byte)'\\', (byte)'{', (byte)'[', (byte)'.', (byte)'/', (byte)'\n'];

    private static readonly long[] InterestingIntegers =
    [
        0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 256, 259, 4096, 65535, 65536, short.MaxValue, int.MaxValue, int.MinValue,
        (long)int.MaxValue + 1, uint.MaxValue, 1_000_000_000_000, long.MaxValue, long.MinValue, 100L << 20,
    ];

    // Tokens that matter to the parsers' grammars: JSON syntax, edge numbers, field names they read.
    private static readonly string[] Dictionary =
    [
        "{", "}", "[", "]", ",", ":", "\"", "null", "true", "false", "-1", "0", "1e400", "-1e400", "1.5", "2147483648", "9223372036854775808",
        "-9223372036854775809", "\"\"", "{}", "[]", "[[]]", "\"\\u0000\"", "\"\\ud800\"", "\"..\"", "\"../x\"", "\"/etc/passwd\"", "\"a\\nb\"",
        "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "\"F32\"", "\"BF16\"", "\"I64\"", "\"BOOL\"",
        "\"model\"", "\"vocab\"", "\"merges\"", "\"type\"", "\"BPE\"", "\"WordLevel\"", "\"pre_tokenizer\"", "\"ByteLevel\"", "\"Split\"", "\"Sequence\"",
        "\"pretokenizers\"", "\"use_regex\"", "\"pattern\"", "\"Regex\"", "\"behavior\"", "\"post_processor\"", "\"TemplateProcessing\"", "\"single\"",
        "\"SpecialToken\"", "\"id\"", "\"added_tokens\"", "\"content\"", "\"unk_token\"", "\"assembly\"", "\"d_in\"", "\"d_sae\"", "\"k\"",
        "\"architecture\"", "\"topk\"", "\"metadata\"", "\"hook_name\"", "\"activation_fn_kwargs\"", "\"normalize_activations\"",
        "\"apply_b_dec_to_input\"", "\"interpmesh_norm_scale\"", "\"minimum\"", "\"maximum\"", "\"items\"", "\"minItems\"", "\"enum\"",
        "\"architectures\"", "\"n_embd\"", "\"n_head\"", "\"n_inner\"", "\"n_ctx\"", "\"rope_scaling\"", "\"rope_type\"", "\"hidden_size\"",
        "\"head_dim\"", "(a+)+$", "\"(a|a)*b\"",
    ];

    /// <summary>A mutated copy of <paramref name="input"/>; <paramref name="other"/> is a splice partner.</summary>
    public byte[] Mutate(byte[] input, byte[]? other = null)
    {
        var data = new List<byte>(input);
        int rounds = 1 + rng.Next(rng.Next(2) == 0 ? 3 : 8);
        for (int r = 0; r < rounds; r++)
            MutateOnce(data, other);
        if (data.Count > maxLength)
            data.RemoveRange(maxLength, data.Count - maxLength);
        return [.. data];
    }

    private void MutateOnce(List<byte> data, byte[]? other)
    {
        switch (rng.Next(14))
        {
            case 0 when data.Count > 0:
                {
                    int i = rng.Next(data.Count);
                    data[i] ^= (byte)(1 << rng.Next(8));
                    break;
                }
            case 1 when data.Count > 0:
                data[rng.Next(data.Count)] = InterestingBytes[rng.Next(InterestingBytes.Length)];
                break;
            case 2 when data.Count > 0:
                data[rng.Next(data.Count)] = (byte)rng.Next(256);
                break;
            case 3 when data.Count >= 4:
                WriteInteger(data, rng.Next(data.Count - 3), 4);
                break;
            case 4 when data.Count >= 8:
                // Length fields sit at the start of binary formats more often than anywhere else.
                WriteInteger(data, rng.Next(2) == 0 ? 0 : rng.Next(data.Count - 7), 8);
                break;
            case 5:
                data.Insert(rng.Next(data.Count + 1), (byte)rng.Next(256));
                break;
            case 6 when data.Count > 0:
                {
                    int at = rng.Next(data.Count);
                    data.RemoveRange(at, Math.Min(data.Count - at, 1 + rng.Next(16)));
                    break;
                }
            case 7 when data.Count > 0:
                {
                    int at = rng.Next(data.Count);
                    int n = Math.Min(data.Count - at, 1 + rng.Next(64));
                    var chunk = data.GetRange(at, n);
                    data.InsertRange(rng.Next(data.Count + 1), chunk);
                    break;
                }
            case 8 when data.Count > 0:
                // Truncate: parsers must notice missing bytes.
                {
                    int keep = rng.Next(data.Count);
                    data.RemoveRange(keep, data.Count - keep);
                    break;
                }
            case 9 when other is { Length: > 0 }:
                {
                    int cut = rng.Next(data.Count + 1);
                    int from = rng.Next(other.Length);
                    data.RemoveRange(cut, data.Count - cut);
                    data.AddRange(other.AsSpan(from, Math.Min(other.Length - from, 4096)).ToArray());
                    break;
                }
            case 10:
            case 11:
                ReplaceNumber(data);
                break;
            case 12:
                {
                    var token = Encoding.UTF8.GetBytes(Dictionary[rng.Next(Dictionary.Length)]);
                    data.InsertRange(rng.Next(data.Count + 1), token);
                    break;
                }
            default:
                if (data.Count > 1)
                {
                    // Swap two chunks' bytes (reorders JSON members, tensor data).
                    int a = rng.Next(data.Count), b = rng.Next(data.Count);
                    (data[a], data[b]) = (data[b], data[a]);
                }
                break;
        }
    }

    private void WriteInteger(List<byte> data, int at, int size)
    {
        long value = rng.Next(4) == 0 ? rng.NextInt64() : InterestingIntegers[rng.Next(InterestingIntegers.Length)];
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, value);
        for (int i = 0; i < size; i++)
            data[at + i] = bytes[i];
    }

    /// <summary>Finds a run of ASCII digits and replaces it with an edge-case number (text formats).</summary>
    private void ReplaceNumber(List<byte> data)
    {
        if (data.Count == 0)
            return;
        int start = rng.Next(data.Count);
        int i = start;
        while (i < data.Count && !IsDigit(data[i]))
            i++;
        if (i == data.Count)
            return;
        int end = i;
        while (end < data.Count && IsDigit(data[end]))
            end++;
        string[] replacements = ["0", "-1", "-0", "1e400", "4294967296", "2147483647", "2147483648", "99999999999999999999", "1.5", "1e-400", "NaN", "3", "65"];
        var replacement = Encoding.ASCII.GetBytes(replacements[rng.Next(replacements.Length)]);
        data.RemoveRange(i, end - i);
        data.InsertRange(i, replacement);
    }

    private static bool IsDigit(byte b) => b is >= (byte)'0' and <= (byte)'9';
}
