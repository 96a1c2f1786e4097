using System.Buffers.Binary;
using System.Text;

namespace InterpMesh.Runtime.Tests.Tokenization;

/// <summary>
/// A line-by-line transcription of llama2.c run.c's <c>encode()</c> (bos=1, eos=0), kept
/// deliberately naive (rescan every pair after each merge) to serve as an oracle for the
/// optimised encoder in the runtime. Reads tok*.bin itself, sharing no code with the runtime.
/// </summary>
internal sealed class RunCReferenceEncoder
{
    private readonly byte[][] vocab;
    private readonly float[] scores;

    public RunCReferenceEncoder(string tokBinPath)
    {
        var data = File.ReadAllBytes(tokBinPath);
        var vocab = new List<byte[]>();
        var scores = new List<float>();
        for (int o = 4; o < data.Length;)
        {
            scores.Add(BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(o)));
            int len = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(o + 4));
            vocab.Add(data[(o + 8)..(o + 8 + len)]);
            o += 8 + len;
        }

        this.vocab = [.. vocab];
        this.scores = [.. scores];
    }

    private int StrLookup(byte[] s)
    {
        for (int i = 0; i < vocab.Length; i++)
        {
            if (vocab[i].AsSpan().SequenceEqual(s))
            {
                return i;
            }
        }

        return -1;
    }

    public int[] Encode(string text)
    {
        byte[] str = Encoding.UTF8.GetBytes(text);
        var tokens = new List<int> { 1 };
        if (str.Length != 0)
        {
            tokens.Add(StrLookup(" "u8.ToArray()));
        }

        var buffer = new List<byte>();
        for (int c = 0; c < str.Length; c++)
        {
            if ((str[c] & 0xC0) != 0x80)
            {
                buffer.Clear();
            }

            buffer.Add(str[c]);
            if (c + 1 < str.Length && (str[c + 1] & 0xC0) == 0x80 && buffer.Count < 4)
            {
                continue;
            }

            int id = StrLookup([.. buffer]);
            if (id != -1)
            {
                tokens.Add(id);
            }
            else
            {
                foreach (byte b in buffer)
                {
                    tokens.Add(b + 3);
                }
            }

            buffer.Clear();
        }

        while (true)
        {
            float bestScore = -1e10f;
            int bestId = -1, bestIdx = -1;
            for (int i = 0; i < tokens.Count - 1; i++)
            {
                int id = StrLookup([.. vocab[tokens[i]], .. vocab[tokens[i + 1]]]);
                if (id != -1 && scores[id] > bestScore)
                {
                    bestScore = scores[id];
                    bestId = id;
                    bestIdx = i;
                }
            }

            if (bestIdx == -1)
            {
                break;
            }

            tokens[bestIdx] = bestId;
            tokens.RemoveAt(bestIdx + 1);
        }

        return [.. tokens];
    }
}
