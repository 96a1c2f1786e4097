using System.Buffers;
using System.Text;

// Tables and test vectors from RFC 7541 (IETF Trust, BSD licence): the static table of Appendix A
// and the Huffman code of Appendix B.

namespace InterpMesh.Routing.Http2;

/// <summary>
/// A header block that does not decode (RFC 7541): a connection error of type COMPRESSION_ERROR
/// (RFC 9113 §4.3). The decoder's dynamic table may be half-updated afterwards, so the connection
/// must not be used again. Messages say what was malformed and never quote the block's bytes.
/// An <see cref="IOException"/>, as the connection's other protocol faults
/// (<c>Http2Connection.Protocol</c>): <see cref="InvalidDataException"/>, the natural base,
/// is sealed.
/// </summary>
internal sealed class HpackException : IOException
{
    public HpackException(string message)
        : base(message)
    {
    }
}

/// <summary>
/// The static table of RFC 7541 Appendix A: 61 fields every HPACK encoder and decoder shares,
/// indexed from 1.
/// </summary>
internal static class HpackStaticTable
{
    /// <summary>The number of entries (the dynamic table's indices start after it).</summary>
    public const int Count = 61;

    /// <summary>The entries; index <c>i</c> of the RFC is element <c>i - 1</c>.</summary>
    private static readonly (string Name, string Value)[] Entries =
    [
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    ];

    /// <summary>Each name's lowest index (several names, such as <c>:status</c>, have more than one entry).</summary>
    private static readonly Dictionary<string, int> NameIndex = BuildNameIndex();

    /// <summary>The entry at <paramref name="index"/> (1 to <see cref="Count"/>).</summary>
    public static (string Name, string Value) Get(int index) => Entries[index - 1];

    /// <summary>The lowest index whose entry has <paramref name="name"/>, or 0 when the table has no such name.</summary>
    public static int IndexOfName(string name) => NameIndex.GetValueOrDefault(name);

    private static Dictionary<string, int> BuildNameIndex()
    {
        var index = new Dictionary<string, int>(Count, StringComparer.Ordinal);
        for (int i = 0; i < Entries.Length; i++)
            index.TryAdd(Entries[i].Name, i + 1);
        return index;
    }
}

/// <summary>
/// Decodes the header blocks a peer sends on one connection (RFC 7541), keeping the dynamic table
/// from one block to the next as the peer's encoder does. Not thread-safe: a connection's blocks
/// are decoded one at a time, in the order they arrived. After an <see cref="HpackException"/> the
/// table may no longer match the peer's, so the connection must be closed.
/// </summary>
internal sealed class HpackDecoder
{
    /// <summary>What RFC 7541 §4.1 adds to an entry's name and value bytes (and RFC 9113 §6.5.2 to a field of a header list).</summary>
    private const int EntryOverhead = 32;

    /// <summary>
    /// The most continuation bytes an integer may take: five carry 35 bits, more than an
    /// <see cref="int"/> holds, so a sixth is only ever padding or an attack.
    /// </summary>
    private const int MaxContinuationBytes = 5;

    /// <summary>Huffman-coded strings up to this many decoded bytes are decoded on the stack.</summary>
    private const int StackScratch = 256;

    private readonly int maxTableSize;
    private readonly int maxHeaderListBytes;

    // The dynamic table as a ring: the newest entry in slot `newest`, older ones in the slots before
    // it (wrapping), `count` of them. Every entry takes at least 32 bytes of the table's size, so
    // maxTableSize / 32 slots always suffice and the ring never grows.
    private readonly (string Name, string Value)[] entries;
    private int newest;
    private int count;
    private int size;
    private int capacity;

    /// <param name="maxTableSize">
    /// The SETTINGS_HEADER_TABLE_SIZE advertised to the peer: the table's size until the peer
    /// lowers it, and the most a dynamic table size update may ask for.
    /// </param>
    /// <param name="maxHeaderListBytes">
    /// The most one block may decode to, counted as RFC 9113 §6.5.2 counts a header list (name
    /// bytes + value bytes + 32 per field), so a small block that references large entries many
    /// times cannot expand into megabytes of headers.
    /// </param>
    public HpackDecoder(int maxTableSize = 4096, int maxHeaderListBytes = 64 * 1024)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxTableSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxHeaderListBytes);
        this.maxTableSize = maxTableSize;
        this.maxHeaderListBytes = maxHeaderListBytes;
        capacity = maxTableSize;
        entries = new (string Name, string Value)[Math.Max(1, maxTableSize / EntryOverhead)];
        newest = entries.Length - 1;
    }

    /// <summary>The dynamic table's size as RFC 7541 §4.1 counts it (name + value bytes + 32 per entry).</summary>
    internal int TableSize => size;

    /// <summary>The number of entries in the dynamic table.</summary>
    internal int TableCount => count;

    /// <summary>The dynamic table's current maximum size (<c>maxTableSize</c> until the peer sends a size update).</summary>
    internal int TableCapacity => capacity;

    /// <summary>The dynamic table's entry at <paramref name="position"/>: 1 is the newest, as the RFC's examples number them.</summary>
    internal (string Name, string Value) TableEntry(int position)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(position, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(position, count);
        return entries[Slot(position - 1)];
    }

    /// <summary>
    /// Decodes one complete header block (the fragments of a HEADERS frame and its CONTINUATION
    /// frames, concatenated) and appends its fields to <paramref name="headers"/> in order. Names
    /// and values are decoded as Latin-1, so every byte maps to one char and back.
    /// </summary>
    /// <exception cref="HpackException">The block is malformed, or decodes to more than the header list limit.</exception>
    public void Decode(ReadOnlySpan<byte> block, List<(string Name, string Value)> headers)
    {
        ArgumentNullException.ThrowIfNull(headers);
        int position = 0;
        long listBytes = 0;
        bool fieldSeen = false;
        while (position < block.Length)
        {
            byte first = block[position];
            (string Name, string Value) field;
            if ((first & 0x80) != 0)
            {
                // §6.1 indexed header field: 1xxxxxxx.
                field = Lookup(ReadInteger(block, ref position, 7));
            }
            else if ((first & 0x40) != 0)
            {
                // §6.2.1 literal with incremental indexing: 01xxxxxx.
                field = ReadLiteral(block, ref position, 6);
                Add(field);
            }
            else if ((first & 0x20) != 0)
            {
                // §6.3 dynamic table size update: 001xxxxx, allowed only at the start of a block (§4.2).
                if (fieldSeen)
                    throw new HpackException("a dynamic table size update after a header field of the block");
                int requested = ReadInteger(block, ref position, 5);
                if (requested > maxTableSize)
                    throw new HpackException($"a dynamic table size update to {requested} bytes, over the {maxTableSize} advertised");
                capacity = requested;
                EvictTo(capacity);
                continue;
            }
            else
            {
                // §6.2.2 without indexing (0000xxxx) and §6.2.3 never indexed (0001xxxx): the same to a
                // decoder, which indexes neither. (The never-indexed flag is not reported: the client
                // does not re-encode the fields it receives with an HPACK encoder of its own.)
                field = ReadLiteral(block, ref position, 4);
            }
            fieldSeen = true;
            listBytes += field.Name.Length + field.Value.Length + EntryOverhead;
            if (listBytes > maxHeaderListBytes)
                throw new HpackException($"a header list over {maxHeaderListBytes} bytes");
            headers.Add(field);
        }
    }

    /// <summary>
    /// Reads an integer with an N-bit prefix (RFC 7541 §5.1) at <paramref name="position"/>, which
    /// it advances past it. The bits above the prefix in the first byte are not looked at.
    /// </summary>
    /// <exception cref="HpackException">The block ends inside the integer, or it is over <see cref="int.MaxValue"/>.</exception>
    internal static int ReadInteger(ReadOnlySpan<byte> source, ref int position, int prefixBits)
    {
        if (position >= source.Length)
            throw new HpackException("a header block that ends where an integer should start");
        int prefixMax = (1 << prefixBits) - 1;
        int value = source[position++] & prefixMax;
        if (value < prefixMax)
            return value;
        long total = value;
        for (int i = 0; i < MaxContinuationBytes; i++)
        {
            if (position >= source.Length)
                throw new HpackException("a header block that ends inside an integer");
            byte next = source[position++];
            total += (long)(next & 0x7F) << (7 * i);
            if (total > int.MaxValue)
                throw new HpackException("an integer over 2^31 - 1");
            if ((next & 0x80) == 0)
                return (int)total;
        }
        throw new HpackException($"an integer of more than {MaxContinuationBytes} continuation bytes");
    }

    /// <summary>The name (indexed, or a string literal when the index is 0) and value of a literal field representation.</summary>
    private (string Name, string Value) ReadLiteral(ReadOnlySpan<byte> block, ref int position, int prefixBits)
    {
        int nameIndex = ReadInteger(block, ref position, prefixBits);
        string name = nameIndex == 0 ? ReadString(block, ref position) : Lookup(nameIndex).Name;
        string value = ReadString(block, ref position);
        return (name, value);
    }

    /// <summary>Reads a string literal (RFC 7541 §5.2), raw or Huffman-coded, as Latin-1.</summary>
    private static string ReadString(ReadOnlySpan<byte> block, ref int position)
    {
        if (position >= block.Length)
            throw new HpackException("a header block that ends where a string literal should start");
        bool huffman = (block[position] & 0x80) != 0;
        int length = ReadInteger(block, ref position, 7);
        if (length > block.Length - position)
            throw new HpackException($"a string literal of {length} bytes where the block has {block.Length - position} left");
        var raw = block.Slice(position, length);
        position += length;
        if (!huffman)
            return Encoding.Latin1.GetString(raw);
        int maxDecoded = Huffman.MaxDecodedLength(length);
        byte[]? rented = null;
        Span<byte> decoded = maxDecoded <= StackScratch
            ? stackalloc byte[StackScratch]
            : (rented = ArrayPool<byte>.Shared.Rent(maxDecoded));
        try
        {
            int written = Huffman.Decode(raw, decoded);
            return Encoding.Latin1.GetString(decoded[..written]);
        }
        finally
        {
            if (rented is not null)
                ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>The field at <paramref name="index"/> of the static table followed by the dynamic one (RFC 7541 §2.3.3).</summary>
    private (string Name, string Value) Lookup(int index)
    {
        if (index == 0)
            throw new HpackException("index 0, which no field has");
        if (index <= HpackStaticTable.Count)
            return HpackStaticTable.Get(index);
        int position = index - HpackStaticTable.Count - 1;
        if (position >= count)
            throw new HpackException($"index {index} past the end of the table ({HpackStaticTable.Count + count} entries)");
        return entries[Slot(position)];
    }

    /// <summary>Inserts a field at the front of the dynamic table, evicting from the back to make room (RFC 7541 §4.4).</summary>
    private void Add((string Name, string Value) field)
    {
        int entrySize = field.Name.Length + field.Value.Length + EntryOverhead;
        if (entrySize > capacity)
        {
            // An entry larger than the whole table empties it and is not added.
            EvictTo(0);
            return;
        }
        EvictTo(capacity - entrySize);
        newest = newest + 1 == entries.Length ? 0 : newest + 1;
        entries[newest] = field;
        count++;
        size += entrySize;
    }

    /// <summary>Evicts the oldest entries until the table's size is at most <paramref name="limit"/>.</summary>
    private void EvictTo(int limit)
    {
        while (size > limit)
        {
            int oldest = Slot(count - 1);
            var (name, value) = entries[oldest];
            size -= name.Length + value.Length + EntryOverhead;
            entries[oldest] = default;
            count--;
        }
    }

    /// <summary>The ring slot of the entry <paramref name="age"/> places behind the newest.</summary>
    private int Slot(int age)
    {
        int slot = newest - age;
        return slot < 0 ? slot + entries.Length : slot;
    }
}

/// <summary>
/// Writes the header fields the client sends (RFC 7541), without state: a static-table index for a
/// field the static table holds whole (<c>:method: POST</c>, <c>:scheme</c>), every other field a
/// literal without indexing (§6.2.2), so the peer's dynamic table is never used and nothing has to
/// track it. Strings are never Huffman-coded: a handful of headers per call, the bytes saved do not
/// pay for the cycles.
/// </summary>
internal static class HpackEncoder
{
    /// <summary>
    /// Writes an indexed header field (§6.1) for entry <paramref name="staticIndex"/> of the static
    /// table (3 is <c>:method: POST</c>, 6 <c>:scheme: http</c>, 7 <c>:scheme: https</c>).
    /// </summary>
    /// <returns>The bytes written.</returns>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too small.</exception>
    public static int WriteIndexed(Span<byte> destination, int staticIndex)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(staticIndex, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(staticIndex, HpackStaticTable.Count);
        return WriteInteger(destination, staticIndex, 7, 0x80);
    }

    /// <summary>The bytes <see cref="WriteLiteral"/> writes for the field (for sizing a buffer); validates it as that does.</summary>
    public static int LiteralLength(string name, string value) => Measure(name, value, out _);

    /// <summary>
    /// Writes a literal header field without indexing (§6.2.2): the static table's lowest index for
    /// <paramref name="name"/> when it has the name, otherwise the name as a string literal; then the
    /// value, Latin-1, as a string literal.
    /// </summary>
    /// <returns>The bytes written (<see cref="LiteralLength"/>).</returns>
    /// <exception cref="ArgumentException">
    /// The name is not lowercase printable ASCII, the value has a character outside Latin-1 or a NUL,
    /// CR or LF (RFC 9113 §8.2.1), or <paramref name="destination"/> is too small.
    /// </exception>
    public static int WriteLiteral(Span<byte> destination, string name, string value)
    {
        int length = Measure(name, value, out int nameIndex);
        if (destination.Length < length)
            throw new ArgumentException($"the field takes {length} bytes encoded; the destination has {destination.Length}", nameof(destination));
        int written = WriteInteger(destination, nameIndex, 4, 0x00);
        if (nameIndex == 0)
            written += WriteString(destination[written..], name);
        written += WriteString(destination[written..], value);
        return written;
    }

    /// <summary>
    /// Writes <paramref name="value"/> as an integer with an N-bit prefix (RFC 7541 §5.1), the bits
    /// above the prefix in the first byte set from <paramref name="flags"/>.
    /// </summary>
    /// <returns>The bytes written.</returns>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too small.</exception>
    internal static int WriteInteger(Span<byte> destination, int value, int prefixBits, byte flags)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(value);
        int length = IntegerLength(value, prefixBits);
        if (destination.Length < length)
            throw new ArgumentException($"the integer takes {length} bytes encoded; the destination has {destination.Length}", nameof(destination));
        int prefixMax = (1 << prefixBits) - 1;
        if (value < prefixMax)
        {
            destination[0] = (byte)(flags | value);
            return 1;
        }
        destination[0] = (byte)(flags | prefixMax);
        int rest = value - prefixMax;
        int written = 1;
        while (rest >= 0x80)
        {
            destination[written++] = (byte)((rest & 0x7F) | 0x80);
            rest >>= 7;
        }
        destination[written++] = (byte)rest;
        return written;
    }

    /// <summary>The bytes an integer with an N-bit prefix takes.</summary>
    internal static int IntegerLength(int value, int prefixBits)
    {
        int prefixMax = (1 << prefixBits) - 1;
        if (value < prefixMax)
            return 1;
        int length = 2;
        for (int rest = value - prefixMax; rest >= 0x80; rest >>= 7)
            length++;
        return length;
    }

    /// <summary>Validates the field and returns its encoded length, and the static index of its name (0 when none).</summary>
    private static int Measure(string name, string value, out int nameIndex)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(value);
        var nameSpan = name.AsSpan();
        if (nameSpan.IndexOfAnyExceptInRange('!', '~') >= 0 || nameSpan.IndexOfAnyInRange('A', 'Z') >= 0)
            throw new ArgumentException($"header name {Shorten(name)} is not lowercase printable ASCII", nameof(name));
        int bad = value.AsSpan().IndexOfAnyExceptInRange('\0', '\u00FF');
        if (bad >= 0)
            throw new ArgumentException($"the value of header {Shorten(name)} has a character outside Latin-1 at position {bad}", nameof(value));
        bad = value.AsSpan().IndexOfAny('\0', '\r', '\n');
        if (bad >= 0)
            throw new ArgumentException($"the value of header {Shorten(name)} has a NUL, CR or LF at position {bad}", nameof(value));
        nameIndex = HpackStaticTable.IndexOfName(name);
        int length = IntegerLength(nameIndex, 4) + IntegerLength(value.Length, 7) + value.Length;
        if (nameIndex == 0)
            length += IntegerLength(name.Length, 7) + name.Length;
        return length;
    }

    /// <summary>Writes a raw (not Huffman-coded) string literal; the string is known to be Latin-1.</summary>
    private static int WriteString(Span<byte> destination, string text)
    {
        int written = WriteInteger(destination, text.Length, 7, 0x00);
        return written + Encoding.Latin1.GetBytes(text, destination[written..]);
    }

    /// <summary>A name for a message: quoted, and cut at 40 characters.</summary>
    private static string Shorten(string name) => name.Length <= 40 ? $"'{name}'" : $"'{name[..40]}…'";
}

/// <summary>
/// The Huffman code of RFC 7541 Appendix B, which HPACK string literals may be coded with (§5.2).
/// Decoding walks a binary tree built once from the 257 (code, length) pairs of the RFC's table —
/// a bit at a time, which is plenty for a few header blocks per call and easy to check.
/// </summary>
internal static class Huffman
{
    /// <summary>The end-of-string symbol: its code's prefixes pad a string to a byte; it must never be decoded.</summary>
    private const int Eos = 256;

    /// <summary>Each symbol's code (0 to 255, then EOS), right-aligned, as the RFC's "code as hex" column.</summary>
    private static readonly uint[] Codes =
    [
        0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
        0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
        0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
        0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
        0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
        0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
        0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
        0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
        0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
        0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
        0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
        0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
        0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
        0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
        0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
        0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
        0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
        0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
        0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
        0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
        0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
        0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
        0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
        0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
        0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
        0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
        0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
        0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
        0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
        0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
        0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
        0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
        0x3fffffff,
    ];

    /// <summary>Each symbol's code length in bits (5 to 30), as the RFC's "len in bits" column.</summary>
    private static readonly byte[] Lengths =
    [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
        28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
        6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
        5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
        13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
        6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
        20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
        24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
        22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
        21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
        26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
        19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
        20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
        26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
        30,
    ];

    /// <summary>
    /// The decoding tree: node <c>n</c>'s children are <c>Tree[2n]</c> (bit 0) and <c>Tree[2n + 1]</c>
    /// (bit 1); a child &gt; 0 is another node, a child &lt; 0 the leaf of symbol <c>~child</c>. Node 0
    /// is the root. A complete prefix code of 257 symbols has 256 inner nodes.
    /// </summary>
    private static readonly short[] Tree = BuildTree();

    /// <summary>The most bytes <paramref name="encodedLength"/> coded bytes can decode to (the shortest code has 5 bits).</summary>
    public static int MaxDecodedLength(int encodedLength) => (int)((long)encodedLength * 8 / 5);

    /// <summary>
    /// Decodes a Huffman-coded string into <paramref name="destination"/>, which must hold
    /// <see cref="MaxDecodedLength"/> bytes for any input to fit.
    /// </summary>
    /// <returns>The bytes written.</returns>
    /// <exception cref="HpackException">
    /// The string holds EOS, or its padding is longer than 7 bits or not all ones (RFC 7541 §5.2).
    /// </exception>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too small.</exception>
    public static int Decode(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        int written = 0;
        int node = 0;
        // The bits read since the last symbol ended, and whether they were all ones: at the end of the
        // string they are its padding, which must be a prefix of EOS's code (all ones) of 7 bits at most.
        int pending = 0;
        bool allOnes = true;
        foreach (byte octet in source)
        {
            for (int shift = 7; shift >= 0; shift--)
            {
                int bit = (octet >> shift) & 1;
                int child = Tree[(2 * node) + bit];
                if (child > 0)
                {
                    node = child;
                    pending++;
                    allOnes &= bit == 1;
                    continue;
                }
                int symbol = ~child;
                if (symbol == Eos)
                    throw new HpackException("EOS inside a Huffman-coded string");
                if (written == destination.Length)
                    throw new ArgumentException($"the string decodes to more than {destination.Length} bytes", nameof(destination));
                destination[written++] = (byte)symbol;
                node = 0;
                pending = 0;
                allOnes = true;
            }
        }
        if (pending > 7)
            throw new HpackException($"Huffman padding of {pending} bits (at most 7 are allowed)");
        if (!allOnes)
            throw new HpackException("Huffman padding that is not all ones");
        return written;
    }

    /// <summary>The bytes <see cref="Encode"/> writes for <paramref name="source"/>.</summary>
    internal static int EncodedLength(ReadOnlySpan<byte> source)
    {
        long bits = 0;
        foreach (byte octet in source)
            bits += Lengths[octet];
        return checked((int)((bits + 7) / 8));
    }

    /// <summary>
    /// Huffman-codes <paramref name="source"/>, padded with ones to a byte. The client sends raw
    /// literals; this is here so that the decoder can be tested on every symbol.
    /// </summary>
    /// <returns>The bytes written.</returns>
    internal static int Encode(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        int length = EncodedLength(source);
        if (destination.Length < length)
            throw new ArgumentException($"the string takes {length} bytes coded; the destination has {destination.Length}", nameof(destination));
        // Codes are appended at the low end of `bits`; whole bytes leave from the top of the `count` held.
        ulong bits = 0;
        int count = 0;
        int written = 0;
        foreach (byte octet in source)
        {
            bits = (bits << Lengths[octet]) | Codes[octet];
            count += Lengths[octet];
            while (count >= 8)
            {
                count -= 8;
                destination[written++] = (byte)(bits >> count);
            }
        }
        if (count > 0)
            destination[written++] = (byte)((bits << (8 - count)) | (0xFFu >> count));
        return written;
    }

    /// <summary>The code and length of <paramref name="symbol"/> (0 to 256, 256 being EOS), for tests of the table itself.</summary>
    internal static (uint Code, int Length) CodeOf(int symbol) => (Codes[symbol], Lengths[symbol]);

    private static short[] BuildTree()
    {
        var tree = new short[2 * 256];
        int nodes = 1;
        for (int symbol = 0; symbol <= Eos; symbol++)
        {
            uint code = Codes[symbol];
            int node = 0;
            for (int bit = Lengths[symbol] - 1; bit > 0; bit--)
            {
                int slot = (2 * node) + (int)((code >> bit) & 1);
                if (tree[slot] == 0)
                    tree[slot] = (short)nodes++;
                node = tree[slot];
            }
            tree[(2 * node) + (int)(code & 1)] = (short)~symbol;
        }
        // Every slot filled (no 0 left: the root is nobody's child) means the code is complete and
        // no code is a prefix of another — a typo in the tables above would show here.
        if (nodes != 256 || Array.IndexOf(tree, (short)0) >= 0)
            throw new InvalidOperationException("the Huffman table is not a complete prefix code");
        return tree;
    }
}
