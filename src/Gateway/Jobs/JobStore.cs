using Google.Protobuf;
using InterpMesh.Contracts.V1;

namespace InterpMesh.Gateway.Jobs;

/// <summary>Job records as JSON files (<c>&lt;id&gt;.json</c>), each replaced atomically, so they survive restarts.</summary>
public sealed class JobStore
{
    private static readonly JsonFormatter Formatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(false));
    private readonly string root;
    private readonly ILogger logger;

    public JobStore(string root, ILogger logger)
    {
        this.root = Path.GetFullPath(root);
        this.logger = logger;
        Directory.CreateDirectory(this.root);
    }

    public void Save(Job job)
    {
        var path = Path.Combine(root, job.Id + ".json");
        var temp = path + ".tmp-" + Guid.NewGuid().ToString("N");
        File.WriteAllText(temp, Formatter.Format(job));
        File.Move(temp, path, overwrite: true);
    }

    public void Delete(string id)
    {
        var path = Path.Combine(root, id + ".json");
        if (File.Exists(path))
            File.Delete(path);
    }

    public List<Job> LoadAll()
    {
        var jobs = new List<Job>();
        foreach (var file in Directory.EnumerateFiles(root, "*.json"))
        {
            try
            {
                jobs.Add(JsonParser.Default.Parse<Job>(File.ReadAllText(file)));
            }
            catch (Exception e) when (e is InvalidProtocolBufferException or InvalidJsonException or IOException)
            {
                logger.LogError("Skipping the unreadable job record {File}: {Message}", file, e.Message);
            }
        }
        foreach (var temp in Directory.EnumerateFiles(root, "*.tmp-*"))
            File.Delete(temp);
        return jobs;
    }
}
