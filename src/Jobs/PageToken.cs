using System.Globalization;
using System.Text;

namespace InterpMesh.Jobs;

/// <summary>
/// ListJobs' page token: opaque to clients, it carries the position after which the next page
/// starts (jobs are listed by their insertion sequence, newest first, so pages stay stable while
/// jobs are added or pruned).
/// </summary>
internal static class PageToken
{
    private const string Prefix = "jobs-before:";

    public static string Encode(long beforeSeq) =>
        Convert.ToBase64String(Encoding.UTF8.GetBytes(Prefix + beforeSeq.ToString(CultureInfo.InvariantCulture))).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    /// <summary>The sequence to list below; <see cref="long.MaxValue"/> for "" (the first page).</summary>
    public static long Decode(string token)
    {
        if (token.Length == 0)
            return long.MaxValue;
        string text;
        try
        {
            string base64 = token.Replace('-', '+').Replace('_', '/');
            text = Encoding.UTF8.GetString(Convert.FromBase64String(base64.PadRight(base64.Length + ((4 - (base64.Length % 4)) % 4), '=')));
        }
        catch (FormatException)
        {
            throw Bad(token);
        }
        if (!text.StartsWith(Prefix, StringComparison.Ordinal)
            || !long.TryParse(text.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out long seq) || seq < 1)
            throw Bad(token);
        return seq;
    }

    private static JobStoreException Bad(string token) =>
        new(JobStoreError.InvalidArgument, $"page_token '{(token.Length > 40 ? token[..40] + "…" : token)}' is not one ListJobs returned; pass \"\" for the first page");
}
