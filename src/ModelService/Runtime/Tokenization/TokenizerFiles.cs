using System.Text;
using System.Text.Json;

namespace InterpMesh.Runtime.Tokenization;

/// <summary>File access shared by the tokenizer loaders, turning I/O and parse failures into <see cref="ModelFormatException"/>.</summary>
internal static class TokenizerFiles
{
    /// <summary>
    /// Largest tokenizer file accepted. Real ones are at most tens of MB (Gemma's tokenizer.json is
    /// ~34 MB); the cap stops a wrong path (a weights file) from being read whole into memory.
    /// </summary>
    public const long MaxFileBytes = 256L * 1024 * 1024;

    public static void EnsureExists(string path)
    {
        if (Directory.Exists(path))
        {
            throw new ModelFormatException(path, "is a directory; expected a tokenizer file.");
        }

        if (!File.Exists(path))
        {
            throw new ModelFormatException(path, "file not found.");
        }
    }

    public static byte[] ReadAllBytes(string path)
    {
        EnsureExists(path);
        try
        {
            long length = new FileInfo(path).Length;
            if (length > MaxFileBytes)
            {
                throw new ModelFormatException(path,
                    $"is {length:N0} bytes, more than the {MaxFileBytes:N0} a tokenizer file can plausibly be; is this a weights file?");
            }

            return File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException(path, $"cannot be read: {e.Message}", e);
        }
    }

    public static JsonDocument ParseJson(string path)
    {
        var bytes = ReadAllBytes(path);
        // JsonDocument checks UTF-8 only when a string is read, and then throws
        // InvalidOperationException from wherever that happens; check the whole file up front.
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
        {
            throw new ModelFormatException(path, "is not valid UTF-8 text; a tokenizer JSON file must be UTF-8.");
        }

        try
        {
            return JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"is not valid JSON ({e.Message}).", e);
        }
    }

    public static IEnumerable<string> ReadLines(string path)
    {
        var bytes = ReadAllBytes(path);
        string text;
        try
        {
            text = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new ModelFormatException(path, "is not valid UTF-8 text.", e);
        }

        // A BOM would otherwise become part of the first token. Only \n and \r\n end lines:
        // ReplaceLineEndings would also split on U+0085/U+2028, which may occur inside pieces.
        return text.TrimStart('\uFEFF').Split('\n').Select(line => line.TrimEnd('\r'));
    }
}
