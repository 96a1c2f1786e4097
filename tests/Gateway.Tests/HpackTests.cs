using System.Text;
using InterpMesh.Routing.Http2;

namespace InterpMesh.Gateway.Tests;

/// <summary>
/// The HPACK codec of the HTTP/2 client (src/Routing/Http2/Hpack.cs), checked against references
/// independent of it: the examples of RFC 7541 Appendix C (integers, single fields, request and
/// response sequences with and without Huffman, with their dynamic tables after each block), the
/// Huffman table's own properties (a complete, canonical prefix code), and malformed blocks, each
/// of which must be an <see cref="HpackException"/>.
/// Tables and test vectors from RFC 7541 (IETF Trust, BSD licence).
/// </summary>
public sealed class HpackTests
{
    private static readonly Encoding Latin1 = Encoding.Latin1;

    // ---- C.1: integers ----

    /// <summary>RFC 7541 C.1.1–C.1.3: 10 and 1337 with a 5-bit prefix, 42 with an 8-bit one; the bits above the prefix are ignored.</summary>
    [Theory]
    [InlineData("0a", 5, 10)]
    [InlineData("ea", 5, 10)]
    [InlineData("1f9a0a", 5, 1337)]
    [InlineData("ff9a0a", 5, 1337)]
    [InlineData("2a", 8, 42)]
    public void Integers_decode_as_rfc_c1(string hex, int prefixBits, int expected)
    {
        byte[] bytes = Hex(hex);
        int position = 0;
        Assert.Equal(expected, HpackDecoder.ReadInteger(bytes, ref position, prefixBits));
        Assert.Equal(bytes.Length, position);
    }

    /// <summary>RFC 7541 C.1.1–C.1.3 the other way: the encoder writes the RFC's bytes.</summary>
    [Theory]
    [InlineData(10, 5, "0a")]
    [InlineData(1337, 5, "1f9a0a")]
    [InlineData(42, 8, "2a")]
    [InlineData(31, 5, "1f00")]
    [InlineData(127, 7, "7f00")]
    public void Integers_encode_as_rfc_c1(int value, int prefixBits, string expected)
    {
        var buffer = new byte[8];
        int n = HpackEncoder.WriteInteger(buffer, value, prefixBits, 0x00);
        Assert.Equal(expected, Convert.ToHexStringLower(buffer, 0, n));
        Assert.Equal(n, HpackEncoder.IntegerLength(value, prefixBits));
    }

    /// <summary>Every prefix width carries values up to <see cref="int.MaxValue"/> both ways.</summary>
    [Fact]
    public void Integers_round_trip_up_to_int_max()
    {
        var buffer = new byte[8];
        foreach (int value in new[] { 0, 1, 126, 127, 128, 254, 255, 256, 16_383, 16_384, 1 << 21, (1 << 28) + 5, int.MaxValue - 1, int.MaxValue })
        {
            for (int prefixBits = 1; prefixBits <= 8; prefixBits++)
            {
                int n = HpackEncoder.WriteInteger(buffer, value, prefixBits, 0x00);
                int position = 0;
                Assert.Equal(value, HpackDecoder.ReadInteger(buffer.AsSpan(0, n), ref position, prefixBits));
                Assert.Equal(n, position);
            }
        }
    }

    /// <summary>An integer past 2^31 - 1, one of six continuation bytes, and one cut short are rejected.</summary>
    [Theory]
    [InlineData("ffffffffff0f")] // 127 + (2^28 - 1) + 15 * 2^28 > int.MaxValue
    [InlineData("ff8180808008")] // 127 + 1 + 8 * 2^28 = 2^31 + 128
    [InlineData("ff808080808000")] // six continuation bytes (a padded 127)
    [InlineData("ff")]
    [InlineData("ff80")]
    [InlineData("")]
    public void Bad_integers_are_rejected(string hex)
    {
        byte[] bytes = Hex(hex);
        Assert.Throws<HpackException>(() =>
        {
            int position = 0;
            HpackDecoder.ReadInteger(bytes, ref position, 7);
        });
    }

    /// <summary>2^31 - 1 with a 7-bit prefix is the largest integer taken (the edge of the overflow check).</summary>
    [Fact]
    public void Int_max_is_the_largest_integer()
    {
        // 127 + 0 + 0x7f·2^7 + 0x7f·2^14 + 0x7f·2^21 + 7·2^28 = 127 + (2^28 - 2^7) + 7·2^28 = 2^31 - 1.
        byte[] bytes = Hex("ff80ffffff07");
        int position = 0;
        Assert.Equal(int.MaxValue, HpackDecoder.ReadInteger(bytes, ref position, 7));
        Assert.Equal(6, position);
        // One more is over: 2^31.
        position = 0;
        Assert.Throws<HpackException>(() => HpackDecoder.ReadInteger(Hex("ff81ffffff07"), ref position, 7));
    }

    // ---- C.2: single fields ----

    /// <summary>RFC 7541 C.2.1: a literal with indexing, new name; the table holds it afterwards (size 55).</summary>
    [Fact]
    public void C2_1_literal_with_indexing()
    {
        var decoder = new HpackDecoder();
        var fields = Decode(decoder, "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        Assert.Equal([("custom-key", "custom-header")], fields);
        AssertTable(decoder, 55, ("custom-key", "custom-header"));
    }

    /// <summary>RFC 7541 C.2.2: a literal without indexing, indexed name; the table stays empty.</summary>
    [Fact]
    public void C2_2_literal_without_indexing()
    {
        var decoder = new HpackDecoder();
        Assert.Equal([(":path", "/sample/path")], Decode(decoder, "040c 2f73 616d 706c 652f 7061 7468"));
        AssertTable(decoder, 0);
    }

    /// <summary>RFC 7541 C.2.3: a literal never indexed, new name; the table stays empty.</summary>
    [Fact]
    public void C2_3_literal_never_indexed()
    {
        var decoder = new HpackDecoder();
        Assert.Equal([("password", "secret")], Decode(decoder, "1008 7061 7373 776f 7264 0673 6563 7265 74"));
        AssertTable(decoder, 0);
    }

    /// <summary>RFC 7541 C.2.4: an indexed field from the static table.</summary>
    [Fact]
    public void C2_4_indexed_field()
    {
        var decoder = new HpackDecoder();
        Assert.Equal([(":method", "GET")], Decode(decoder, "82"));
        AssertTable(decoder, 0);
    }

    // ---- C.3 / C.4: requests ----

    /// <summary>RFC 7541 C.3: three requests on one decoder, no Huffman; fields and table after each.</summary>
    [Fact]
    public void C3_requests_without_huffman() => Requests(
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");

    /// <summary>RFC 7541 C.4: the same requests with Huffman-coded strings.</summary>
    [Fact]
    public void C4_requests_with_huffman() => Requests(
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");

    // ---- C.5 / C.6: responses with eviction ----

    /// <summary>RFC 7541 C.5: three responses, no Huffman, a 256-byte table, entries evicted.</summary>
    [Fact]
    public void C5_responses_without_huffman() => Responses(
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31");

    /// <summary>RFC 7541 C.6: the same responses with Huffman-coded strings.</summary>
    [Fact]
    public void C6_responses_with_huffman() => Responses(
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07");

    // ---- Huffman ----

    /// <summary>The Huffman-coded strings of RFC 7541 C.4 and C.6, both ways.</summary>
    [Theory]
    [InlineData("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff")]
    [InlineData("no-cache", "a8eb 1064 9cbf")]
    [InlineData("custom-key", "25a8 49e9 5ba9 7d7f")]
    [InlineData("custom-value", "25a8 49e9 5bb8 e8b4 bf")]
    [InlineData("302", "6402")]
    [InlineData("private", "aec3 771a 4b")]
    [InlineData("Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff")]
    [InlineData("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3")]
    [InlineData("gzip", "9bd9 ab")]
    [InlineData("foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1", "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07")]
    public void Huffman_matches_the_rfc_examples(string text, string hex)
    {
        byte[] coded = Hex(hex);
        var decoded = new byte[Huffman.MaxDecodedLength(coded.Length)];
        int n = Huffman.Decode(coded, decoded);
        Assert.Equal(text, Latin1.GetString(decoded, 0, n));

        byte[] plain = Latin1.GetBytes(text);
        var encoded = new byte[Huffman.EncodedLength(plain)];
        Assert.Equal(coded.Length, Huffman.Encode(plain, encoded));
        Assert.Equal(coded, encoded);
    }

    /// <summary>
    /// The table is the RFC's: 257 codes of 5 to 30 bits, known spot values, a complete prefix code
    /// (Kraft sum exactly 1) and canonical (sorted by length then symbol, each code the previous one
    /// plus one, shifted left when the length grows) — so a mistyped code or length shows.
    /// </summary>
    [Fact]
    public void Huffman_table_is_complete_and_canonical()
    {
        Assert.Equal((0x0u, 5), Huffman.CodeOf('0'));
        Assert.Equal((0x3u, 5), Huffman.CodeOf('a'));
        Assert.Equal((0x14u, 6), Huffman.CodeOf(' '));
        Assert.Equal((0x1ff8u, 13), Huffman.CodeOf(0));
        Assert.Equal((0x3ffffffcu, 30), Huffman.CodeOf('\n'));
        Assert.Equal((0x3ffffeeu, 26), Huffman.CodeOf(255));
        Assert.Equal((0x3fffffffu, 30), Huffman.CodeOf(256));

        long kraft = 0;
        var order = new List<int>();
        for (int symbol = 0; symbol <= 256; symbol++)
        {
            var (code, length) = Huffman.CodeOf(symbol);
            Assert.InRange(length, 5, 30);
            Assert.True(code < 1u << length, $"symbol {symbol}: code wider than its length");
            kraft += 1L << (30 - length);
            order.Add(symbol);
        }
        Assert.Equal(1L << 30, kraft);

        order.Sort((a, b) => Huffman.CodeOf(a).Length != Huffman.CodeOf(b).Length
            ? Huffman.CodeOf(a).Length.CompareTo(Huffman.CodeOf(b).Length)
            : a.CompareTo(b));
        uint next = 0;
        int previousLength = Huffman.CodeOf(order[0]).Length;
        foreach (int symbol in order)
        {
            var (code, length) = Huffman.CodeOf(symbol);
            next <<= length - previousLength;
            Assert.True(next == code, $"symbol {symbol}: code {code:x}, canonical {next:x}");
            next++;
            previousLength = length;
        }
    }

    /// <summary>Every byte value, alone (each padding length) and all together, comes back from encode then decode.</summary>
    [Fact]
    public void Huffman_round_trips_every_byte()
    {
        var all = new byte[256 * 3];
        for (int i = 0; i < all.Length; i++)
            all[i] = (byte)(i * 7);
        for (int length = 0; length <= all.Length; length = length < 300 ? length + 1 : length + 97)
        {
            var plain = all.AsSpan(0, Math.Min(length, all.Length));
            var coded = new byte[Huffman.EncodedLength(plain)];
            int c = Huffman.Encode(plain, coded);
            var decoded = new byte[Huffman.MaxDecodedLength(c)];
            int n = Huffman.Decode(coded.AsSpan(0, c), decoded);
            Assert.True(plain.SequenceEqual(decoded.AsSpan(0, n)), $"length {length}");
        }
    }

    /// <summary>
    /// RFC 7541 §5.2: padding over 7 bits, padding not all ones, and EOS in the string are errors.
    /// ('a' is 00011, so "a" + 111 is 0x1f.)
    /// </summary>
    [Theory]
    [InlineData("1fff")] // "a", then 11 bits of ones
    [InlineData("ff")] // 8 bits of ones: padding with no symbol before it
    [InlineData("18")] // "a" + 000: padding not all ones (a prefix of '0')
    [InlineData("1e")] // "a" + 110
    [InlineData("0000")] // 00000|000 00|00000|0: '0', '0', '0', then a 0 bit of padding
    [InlineData("ffffffff")] // EOS (30 ones) then 2 more
    [InlineData("1fffffffff")] // "a" + EOS + 2 ones
    public void Bad_huffman_is_rejected(string hex)
    {
        byte[] coded = Hex(hex);
        var decoded = new byte[Huffman.MaxDecodedLength(coded.Length) + 1];
        Assert.Throws<HpackException>(() => Huffman.Decode(coded, decoded));
    }

    /// <summary>Padding of up to 7 ones is fine ('0' is 00000, 'a' 00011, '%' 010101), and an empty string is empty.</summary>
    [Theory]
    [InlineData("1f", "a")] // 00011|111
    [InlineData("07", "0")] // 00000|111
    [InlineData("00ff", "0a")] // 00000|000 11|111111: '0', 'a', 6 ones of padding
    [InlineData("57", "%")] // 010101|11
    [InlineData("", "")]
    public void Good_huffman_padding_is_accepted(string hex, string text)
    {
        byte[] coded = Hex(hex);
        var decoded = new byte[Huffman.MaxDecodedLength(coded.Length)];
        int n = Huffman.Decode(coded, decoded);
        Assert.Equal(text, Latin1.GetString(decoded, 0, n));
    }

    // ---- malformed blocks ----

    /// <summary>Each malformed block is an <see cref="HpackException"/>, never another exception or a partial success.</summary>
    [Theory]
    [InlineData("ff")] // indexed field, integer cut after its prefix
    [InlineData("82ff80")] // a good field, then an integer cut inside its continuation bytes
    [InlineData("400a63")] // new name of 10 bytes, 1 left
    [InlineData("4001")] // new name of 1 byte, none left
    [InlineData("0401")] // :path value of 1 byte, none left
    [InlineData("04")] // :path, value missing entirely
    [InlineData("047f")] // value length cut after its prefix
    [InlineData("80")] // index 0
    [InlineData("be")] // index 62 with an empty dynamic table
    [InlineData("7e0178")] // literal with indexing, name index 62, empty dynamic table
    [InlineData("0f3001")] // literal, name index 15 + 48 = 63, empty dynamic table
    [InlineData("0081180161")] // Huffman name "a" + 000 padding
    [InlineData("00811f82ffff")] // Huffman value of 16 ones (padding longer than 7 bits)
    [InlineData("00016184ffffffff")] // Huffman value holding EOS
    [InlineData("8220")] // table size update after a field
    [InlineData("208220")] // one at the start is fine, one after a field is not
    [InlineData("ffffffffffff0f")] // index over int.MaxValue
    public void Malformed_blocks_are_rejected(string hex)
    {
        var decoder = new HpackDecoder();
        Assert.Throws<HpackException>(() => decoder.Decode(Hex(hex), []));
    }

    /// <summary>A dynamic table size update may go up to the advertised size, not past it.</summary>
    [Fact]
    public void Table_size_update_is_bounded_by_the_advertised_size()
    {
        var buffer = new byte[8];
        int n = HpackEncoder.WriteInteger(buffer, 4097, 5, 0x20);
        Assert.Throws<HpackException>(() => new HpackDecoder(4096).Decode(buffer.AsSpan(0, n), []));

        var decoder = new HpackDecoder(4096);
        n = HpackEncoder.WriteInteger(buffer, 4096, 5, 0x20);
        decoder.Decode(buffer.AsSpan(0, n), []);
        Assert.Equal(4096, decoder.TableCapacity);

        Assert.Throws<HpackException>(() => new HpackDecoder(0).Decode(Hex("21"), []));
        new HpackDecoder(0).Decode(Hex("20"), []);
    }

    /// <summary>
    /// Size updates at the start of a block (RFC 7541 §4.2 allows two: the smallest, then the final)
    /// evict from the oldest; a field bigger than the table empties it and is still decoded.
    /// </summary>
    [Fact]
    public void Size_updates_evict_and_an_oversized_entry_empties_the_table()
    {
        var decoder = new HpackDecoder(256);
        Decode(decoder, "4001 6101 31"); // a: 1 (34)
        Decode(decoder, "4001 6201 32"); // b: 2 (34)
        Decode(decoder, "4001 6301 33"); // c: 3 (34)
        AssertTable(decoder, 102, ("c", "3"), ("b", "2"), ("a", "1"));

        // Shrink to 70 (evicts a: 1), then grow back to 256: both at the start of one block.
        var block = new byte[16];
        int n = HpackEncoder.WriteInteger(block, 70, 5, 0x20);
        n += HpackEncoder.WriteInteger(block.AsSpan(n), 256, 5, 0x20);
        block[n++] = 0xbe; // index 62: the newest, c: 3
        Assert.Equal([("c", "3")], Decode(decoder, block.AsSpan(0, n)));
        AssertTable(decoder, 68, ("c", "3"), ("b", "2"));
        Assert.Equal(256, decoder.TableCapacity);

        // A 300-byte value is more than the table holds: the table is emptied, the field still comes out.
        string big = new('x', 300);
        var literal = new byte[400];
        literal[0] = 0x40;
        int m = 1 + HpackEncoder.WriteInteger(literal.AsSpan(1), 1, 7, 0x00);
        literal[m++] = (byte)'d';
        m += HpackEncoder.WriteInteger(literal.AsSpan(m), big.Length, 7, 0x00);
        m += Latin1.GetBytes(big, literal.AsSpan(m));
        Assert.Equal([("d", big)], Decode(decoder, literal.AsSpan(0, m)));
        AssertTable(decoder, 0);
        Assert.Throws<HpackException>(() => decoder.Decode(Hex("be"), []));
    }

    /// <summary>
    /// The header list limit (name + value + 32 per field) holds for a block as a whole — also when a
    /// tiny block references one large dynamic entry again and again — and resets at the next block.
    /// </summary>
    [Fact]
    public void Header_list_over_the_limit_is_rejected()
    {
        // x: 67 bytes of 'v' counts 1 + 67 + 32 = 100.
        var field = new byte[128];
        int n = HpackEncoder.WriteLiteral(field, "x", new string('v', 67));
        var decoder = new HpackDecoder(maxHeaderListBytes: 100);
        Assert.Single(Decode(decoder, field.AsSpan(0, n)));
        Assert.Single(Decode(decoder, field.AsSpan(0, n)));
        var two = field.AsSpan(0, n).ToArray().Concat(field.AsSpan(0, n).ToArray()).ToArray();
        Assert.Throws<HpackException>(() => decoder.Decode(two, []));

        n = HpackEncoder.WriteLiteral(field, "x", new string('v', 68));
        Assert.Throws<HpackException>(() => new HpackDecoder(maxHeaderListBytes: 100).Decode(field.AsSpan(0, n), []));

        // One 1 KiB entry indexed, then referenced by a one-byte index 100 times: 100 KiB from ~1 KiB.
        var amplifying = new List<byte> { 0x40, 0x01, (byte)'k' };
        var length = new byte[8];
        int l = HpackEncoder.WriteInteger(length, 1000, 7, 0x00);
        amplifying.AddRange(length.AsSpan(0, l).ToArray());
        amplifying.AddRange(Enumerable.Repeat((byte)'v', 1000));
        amplifying.AddRange(Enumerable.Repeat((byte)0xbe, 100));
        var limited = new HpackDecoder();
        var error = Assert.Throws<HpackException>(() => limited.Decode(amplifying.ToArray(), []));
        Assert.Contains("65536", error.Message);
    }

    // ---- encoder ----

    /// <summary>Indexed fields are one byte: 0x80 | index.</summary>
    [Theory]
    [InlineData(2, "82")]
    [InlineData(3, "83")]
    [InlineData(6, "86")]
    [InlineData(7, "87")]
    [InlineData(61, "bd")]
    public void Encoder_writes_indexed_fields(int index, string expected)
    {
        var buffer = new byte[4];
        int n = HpackEncoder.WriteIndexed(buffer, index);
        Assert.Equal(expected, Convert.ToHexStringLower(buffer, 0, n));
        Assert.Equal(HpackStaticTable.Get(index), Decode(new HpackDecoder(), buffer.AsSpan(0, n)).Single());
    }

    /// <summary>
    /// Literals without indexing, checked against RFC 7541 C.2.2 (the same representation) and C.2.3
    /// (never indexed, 0x10, where the encoder writes without indexing, 0x00: otherwise the same bytes).
    /// </summary>
    [Fact]
    public void Encoder_writes_the_rfc_literals()
    {
        var buffer = new byte[64];
        int n = HpackEncoder.WriteLiteral(buffer, ":path", "/sample/path");
        Assert.Equal("040c2f73616d706c652f70617468", Convert.ToHexStringLower(buffer, 0, n));
        Assert.Equal(n, HpackEncoder.LiteralLength(":path", "/sample/path"));

        n = HpackEncoder.WriteLiteral(buffer, "password", "secret");
        Assert.Equal("0008" + "70617373776f7264" + "06" + "736563726574", Convert.ToHexStringLower(buffer, 0, n));
        Assert.Equal(n, HpackEncoder.LiteralLength("password", "secret"));

        // The lowest index of a name with several entries: :status is 8 (to 14), as a 4-bit prefix 0x08.
        n = HpackEncoder.WriteLiteral(buffer, ":status", "201");
        Assert.Equal("0803323031", Convert.ToHexStringLower(buffer, 0, n));
        // content-type is 31: past the 4-bit prefix (15), then 16.
        n = HpackEncoder.WriteLiteral(buffer, "content-type", "application/grpc");
        Assert.Equal("0f10", Convert.ToHexStringLower(buffer, 0, 2));
    }

    /// <summary>
    /// What the encoder writes the decoder reads back, field for field, for names in the static table
    /// and not, long names and values (multi-byte lengths), and Latin-1 values ("é" as one byte 0xe9);
    /// the decoder's dynamic table stays empty.
    /// </summary>
    [Fact]
    public void Encoder_output_round_trips_through_the_decoder()
    {
        (string Name, string Value)[] fields =
        [
            (":path", "/interpmesh.v1.ModelService/Run"),
            (":authority", "replica-0.models.svc:8443"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "30S"),
            ("x-request-id", "café é ÿ \u00a0\u0080 tab\there"),
            ("x-" + new string('n', 200), new string('v', 5000)),
            ("user-agent", ""),
            ("x-empty", ""),
        ];
        var buffer = new byte[16_384];
        int n = HpackEncoder.WriteIndexed(buffer, 3);
        n += HpackEncoder.WriteIndexed(buffer.AsSpan(n), 7);
        foreach (var (name, value) in fields)
        {
            int before = n;
            n += HpackEncoder.WriteLiteral(buffer.AsSpan(n), name, value);
            Assert.Equal(n - before, HpackEncoder.LiteralLength(name, value));
        }
        Assert.Contains((byte)0xe9, buffer.AsSpan(0, n).ToArray());

        var decoder = new HpackDecoder();
        var decoded = Decode(decoder, buffer.AsSpan(0, n));
        Assert.Equal([(":method", "POST"), (":scheme", "https"), .. fields], decoded);
        AssertTable(decoder, 0);
    }

    /// <summary>Names that are not lowercase printable ASCII, values outside Latin-1 or with NUL/CR/LF, and short buffers are argument errors.</summary>
    [Fact]
    public void Encoder_rejects_bad_fields_and_short_buffers()
    {
        var buffer = new byte[64];
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "Content-Type", "x"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "x y", "x"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "x-é", "x"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "", "x"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.LiteralLength("X", "x"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "x", "€"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "x", "a\r\nb: c"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer, "x", "a\0"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteLiteral(buffer.AsSpan(0, 5), "x-long", "value"));
        Assert.Throws<ArgumentException>(() => HpackEncoder.WriteIndexed([], 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => HpackEncoder.WriteIndexed(buffer, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => HpackEncoder.WriteIndexed(buffer, 62));
        // Exactly the length needed is enough.
        int length = HpackEncoder.LiteralLength("x-long", "value");
        Assert.Equal(length, HpackEncoder.WriteLiteral(buffer.AsSpan(0, length), "x-long", "value"));
    }

    // ---- helpers ----

    /// <summary>C.3 and C.4: the three requests' fields, and the table after each (entries newest first, sizes 57, 110, 164).</summary>
    private static void Requests(string first, string second, string third)
    {
        var decoder = new HpackDecoder();
        Assert.Equal(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
            Decode(decoder, first));
        AssertTable(decoder, 57, (":authority", "www.example.com"));

        Assert.Equal(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"), ("cache-control", "no-cache")],
            Decode(decoder, second));
        AssertTable(decoder, 110, ("cache-control", "no-cache"), (":authority", "www.example.com"));

        Assert.Equal(
            [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"), ("custom-key", "custom-value")],
            Decode(decoder, third));
        AssertTable(decoder, 164, ("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com"));
    }

    /// <summary>C.5 and C.6: the three responses with a 256-byte table (sizes 222, 222, 215 as entries are evicted).</summary>
    private static void Responses(string first, string second, string third)
    {
        const string Date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        const string Date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        const string Location = "https://www.example.com";
        const string Cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        var decoder = new HpackDecoder(256);
        Assert.Equal(
            [(":status", "302"), ("cache-control", "private"), ("date", Date1), ("location", Location)],
            Decode(decoder, first));
        AssertTable(decoder, 222, ("location", Location), ("date", Date1), ("cache-control", "private"), (":status", "302"));

        Assert.Equal(
            [(":status", "307"), ("cache-control", "private"), ("date", Date1), ("location", Location)],
            Decode(decoder, second));
        AssertTable(decoder, 222, (":status", "307"), ("location", Location), ("date", Date1), ("cache-control", "private"));

        Assert.Equal(
            [(":status", "200"), ("cache-control", "private"), ("date", Date2), ("location", Location), ("content-encoding", "gzip"), ("set-cookie", Cookie)],
            Decode(decoder, third));
        AssertTable(decoder, 215, ("set-cookie", Cookie), ("content-encoding", "gzip"), ("date", Date2));
    }

    /// <summary>Checks the dynamic table: its RFC size, and its entries newest first.</summary>
    private static void AssertTable(HpackDecoder decoder, int size, params (string Name, string Value)[] entries)
    {
        Assert.Equal(size, decoder.TableSize);
        Assert.Equal(entries.Length, decoder.TableCount);
        for (int i = 0; i < entries.Length; i++)
            Assert.Equal(entries[i], decoder.TableEntry(i + 1));
        // The size is the RFC's count of what is held (name + value + 32 per entry).
        Assert.Equal(size, entries.Sum(e => e.Name.Length + e.Value.Length + 32));
    }

    private static List<(string Name, string Value)> Decode(HpackDecoder decoder, string hex) => Decode(decoder, Hex(hex));

    private static List<(string Name, string Value)> Decode(HpackDecoder decoder, ReadOnlySpan<byte> block)
    {
        var fields = new List<(string Name, string Value)>();
        decoder.Decode(block, fields);
        return fields;
    }

    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));
}
