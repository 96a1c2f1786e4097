using System.Buffers.Binary;
using System.Text;

namespace InterpMesh.Runtime.Tokenization;

/// <summary>
/// llama2.c's <c>tok*.bin</c> vocabulary with the semantics of its reference <c>run.c</c>: a dummy
/// space is prefixed, each UTF-8 code point is looked up (falling back to byte pieces, id = byte + 3),
/// then the adjacent pair whose concatenation has the highest score is merged until none is left.
/// Unlike SentencePiece's normaliser, repeated, leading and trailing spaces are kept.
/// </summary>
/// <remarks>
/// File layout (little-endian): int32 max_token_length, then per piece float32 score, int32 byte
/// length and that many bytes. The piece count is not stored (run.c takes it from the checkpoint),
/// so pieces are read to the end of the file.
/// </remarks>
public sealed class Llama2CTokenizer : ITextTokenizer
{
    /// <summary>Id run.c prepends to every prompt.</summary>
    public const int Bos = 1;

    /// <summary>Id of the end-of-sequence piece.</summary>
    public const int Eos = 2;

    // Ids 3..258 are the byte pieces <0x00>..<0xFF>; run.c's byte fallback relies on this.
    private const int ByteOffset = 3;
    private const int MinPieces = ByteOffset + 256;

    // Pieces are kept as Latin-1 strings (one char per byte) so arbitrary byte sequences can be
    // concatenated and looked up in a Dictionary exactly as run.c's strcmp-based lookup does.
    private static readonly Encoding Latin1 = Encoding.Latin1;

    // Best score first; on equal scores the leftmost pair, as run.c's strict ">" scan gives.
    private static readonly Comparer<(float Score, int Left)> CandidateOrder = Comparer<(float Score, int Left)>.Create(
        (a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left));

    private readonly string[] pieces;
    private readonly float[] scores;
    private readonly Dictionary<string, int> lookup;
    private readonly int spaceId;

    private Llama2CTokenizer(string[] pieces, float[] scores)
    {
        this.pieces = pieces;
        this.scores = scores;
        lookup = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (int i = 0; i < pieces.Length; i++)
        {
            // run.c binary-searches a sorted copy, so with duplicate pieces the winner is unspecified;
            // the lowest id is the deterministic choice.
            lookup.TryAdd(pieces[i], i);
        }

        // run.c looks the dummy prefix up as " "; every llama2.c vocabulary has it. Falling back to
        // the byte piece keeps a vocabulary without it usable instead of emitting run.c's id -1.
        spaceId = lookup.TryGetValue(" ", out int space) ? space : ' ' + ByteOffset;
    }

    /// <inheritdoc/>
    public int VocabSize => pieces.Length;

    /// <inheritdoc/>
    public int? BosId => Bos;

    /// <inheritdoc/>
    public int? EosId => Eos;

    /// <inheritdoc/>
    public bool AddsBos => true;

    /// <inheritdoc/>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = new List<int> { Bos };
        if (text.Length == 0)
        {
            // run.c adds the dummy prefix only for non-empty text, so "" is just [BOS].
            return [.. tokens];
        }

        tokens.Add(spaceId);
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        int start = 0;
        while (start < bytes.Length)
        {
            // A code point is a lead byte plus its continuation bytes, capped at 4 bytes as in run.c.
            int end = start + 1;
            while (end < bytes.Length && (bytes[end] & 0xC0) == 0x80 && end - start < 4)
            {
                end++;
            }

            if (lookup.TryGetValue(Latin1.GetString(bytes, start, end - start), out int id))
            {
                tokens.Add(id);
            }
            else
            {
                for (int i = start; i < end; i++)
                {
                    tokens.Add(bytes[i] + ByteOffset);
                }
            }

            start = end;
        }

        Merge(tokens);
        return [.. tokens];
    }

    /// <summary>
    /// run.c's merge loop: repeatedly merge the adjacent pair with the best score (strictly above
    /// -1e10), the leftmost on ties. run.c rescans every pair after each merge, which is quadratic;
    /// a heap ordered by (score desc, position asc) with stale entries skipped picks the same pair
    /// each step. Positions stay ordered because merging never reorders tokens.
    /// </summary>
    private void Merge(List<int> tokens)
    {
        int n = tokens.Count;
        var tok = tokens.ToArray();
        var next = new int[n];
        var prev = new int[n];
        var version = new int[n];
        for (int i = 0; i < n; i++)
        {
            next[i] = i + 1 < n ? i + 1 : -1;
            prev[i] = i - 1;
        }

        var heap = new PriorityQueue<Candidate, (float Score, int Left)>(n, CandidateOrder);
        void Offer(int left)
        {
            // BOS takes part in pairing, as in run.c (it never matches a piece in practice).
            int right = left < 0 ? -1 : next[left];
            if (right < 0)
            {
                return;
            }

            int id = PairId(tok[left], tok[right]);
            if (id != -1 && scores[id] > -1e10f)
            {
                heap.Enqueue(new Candidate(left, right, id, version[left], version[right]), (scores[id], left));
            }
        }

        for (int i = 0; i + 1 < n; i++)
        {
            Offer(i);
        }

        while (heap.TryDequeue(out var c, out _))
        {
            if (version[c.Left] != c.LeftVersion || version[c.Right] != c.RightVersion)
            {
                continue; // one side was merged since this pair was offered
            }

            tok[c.Left] = c.Merged;
            version[c.Left]++;
            version[c.Right]++;
            next[c.Left] = next[c.Right];
            if (next[c.Left] >= 0)
            {
                prev[next[c.Left]] = c.Left;
            }

            Offer(prev[c.Left]);
            Offer(c.Left);
        }

        tokens.Clear();
        for (int i = 0; i >= 0; i = next[i])
        {
            tokens.Add(tok[i]);
        }
    }

    private readonly record struct Candidate(int Left, int Right, int Merged, int LeftVersion, int RightVersion);

    private int PairId(int left, int right) =>
        lookup.TryGetValue(string.Concat(pieces[left], pieces[right]), out int id) ? id : -1;

    /// <inheritdoc/>
    /// <remarks>
    /// As run.c prints a stream: a piece's leading space is dropped right after BOS, and
    /// <c>&lt;0xXX&gt;</c> pieces become raw bytes. BOS and EOS are control markers and print
    /// nothing. Bytes that do not form valid UTF-8 come out as U+FFFD.
    /// </remarks>
    public string Decode(IReadOnlyList<int> ids)
    {
        TokenIdValidation.EnsureKnown(ids, pieces.Length);
        var bytes = new List<byte>();
        int prev = -1;
        foreach (int id in ids)
        {
            if (id != Bos && id != Eos)
            {
                string piece = pieces[id];
                if (prev == Bos && piece.Length > 0 && piece[0] == ' ')
                {
                    piece = piece[1..];
                }

                if (TryParseBytePiece(piece, out byte b))
                {
                    bytes.Add(b);
                }
                else
                {
                    bytes.AddRange(Latin1.GetBytes(piece));
                }
            }

            prev = id;
        }

        return Encoding.UTF8.GetString([.. bytes]);
    }

    private static bool TryParseBytePiece(string piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out value);
    }

    /// <summary>Reads a llama2.c <c>tok*.bin</c> file.</summary>
    /// <exception cref="ModelFormatException">The file is missing, truncated, or has impossible length fields.</exception>
    public static Llama2CTokenizer FromFile(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        return Parse(path, TokenizerFiles.ReadAllBytes(path));
    }

    private static Llama2CTokenizer Parse(string path, ReadOnlySpan<byte> data)
    {
        const string layout = "expected a llama2.c tok*.bin: int32 max_token_length, then per piece float32 score, int32 length, bytes";
        if (data.Length < 4)
        {
            throw new ModelFormatException(path, $"is {data.Length} bytes, too short to hold the max_token_length header; {layout}.");
        }

        int maxTokenLength = BinaryPrimitives.ReadInt32LittleEndian(data);
        if (maxTokenLength <= 0)
        {
            throw new ModelFormatException(path, $"max_token_length is {maxTokenLength}; it must be positive ({layout}).");
        }

        var pieces = new List<string>();
        var scores = new List<float>();
        int offset = 4;
        while (offset < data.Length)
        {
            int index = pieces.Count;
            if (data.Length - offset < 8)
            {
                throw new ModelFormatException(path,
                    $"is truncated: piece {index} at byte {offset} needs an 8-byte score and length header but only {data.Length - offset} bytes remain.");
            }

            float score = BinaryPrimitives.ReadSingleLittleEndian(data[offset..]);
            int length = BinaryPrimitives.ReadInt32LittleEndian(data[(offset + 4)..]);
            offset += 8;
            // Lengths are checked against the bytes actually present before anything is allocated,
            // so a lying field cannot trigger a huge allocation.
            if (length < 0)
            {
                throw new ModelFormatException(path, $"piece {index} has negative length {length}; lengths must be 0 or more.");
            }

            if (length > data.Length - offset)
            {
                throw new ModelFormatException(path,
                    $"is truncated or corrupt: piece {index} claims {length} bytes but only {data.Length - offset} remain.");
            }

            // run.c sizes its merge buffer from max_token_length; a longer piece would overflow it,
            // so the header is lying.
            if (length > maxTokenLength)
            {
                throw new ModelFormatException(path,
                    $"piece {index} is {length} bytes, longer than the header's max_token_length {maxTokenLength}.");
            }

            pieces.Add(Latin1.GetString(data.Slice(offset, length)));
            scores.Add(score);
            offset += length;
        }

        if (pieces.Count < MinPieces)
        {
            throw new ModelFormatException(path,
                $"holds {pieces.Count} pieces; expected at least {MinPieces} (<unk>, BOS, EOS and the 256 byte pieces <0x00>..<0xFF>).");
        }

        return new Llama2CTokenizer([.. pieces], [.. scores]);
    }
}
