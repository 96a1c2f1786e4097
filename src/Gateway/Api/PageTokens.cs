using System.Buffers.Text;
using System.Text;
using Grpc.Core;
using InterpMesh.Contracts.Artifacts;

namespace InterpMesh.Gateway.Api;

/// <summary>
/// ListArtifacts page tokens: opaque to clients, they carry the listing's prefix and the last name
/// served (base64url of <c>a1\n&lt;last&gt;\n&lt;prefix&gt;</c>). The next page continues after that
/// name, so pages stay in name order however artifacts come and go between calls, and a token is
/// refused with a request of another prefix.
/// </summary>
internal static class PageTokens
{
    private const string Version = "a1";

    /// <summary>Longest token accepted: a name and a prefix of at most 200 characters each, encoded.</summary>
    private const int MaxLength = 2048;

    public static string Write(string prefix, string last) => Base64Url.EncodeToString(Encoding.UTF8.GetBytes($"{Version}\n{last}\n{prefix}"));

    /// <summary>The last name the previous page served, or null for the first page (no token).</summary>
    public static string? Read(string token, string prefix)
    {
        if (token.Length == 0)
            return null;
        string[]? parts = null;
        if (token.Length <= MaxLength && Base64Url.IsValid(token))
        {
            try
            {
                parts = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(Base64Url.DecodeFromChars(token)).Split('\n', 3);
            }
            catch (Exception e) when (e is DecoderFallbackException or FormatException)
            {
            }
        }
        if (parts is not [Version, var last, var tokenPrefix] || !IsName(last) || !last.StartsWith(tokenPrefix, StringComparison.Ordinal))
            throw new RpcException(new Status(StatusCode.InvalidArgument, "page_token is not one this gateway issued: pass a previous response's next_page_token unchanged, or none to start from the first page"));
        if (tokenPrefix != prefix)
            throw new RpcException(new Status(StatusCode.InvalidArgument, "page_token belongs to a listing with another prefix: send the same prefix as the call that returned it, or no token to start again"));
        return last;
    }

    private static bool IsName(string name)
    {
        try
        {
            ArtifactNames.Check(name);
            return true;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
