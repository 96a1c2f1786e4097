using InterpMesh.Contracts.V1;
using InterpMesh.Gateway.Jobs;

namespace InterpMesh.Gateway.Tests;

/// <summary>Job.error_status is gRPC's status code as an enum: the same numbers, and the name error_code carries.</summary>
public sealed class JobErrorCodeTests
{
    [Fact]
    public void Every_value_is_the_grpc_code_of_its_name_and_the_mapping_agrees()
    {
        const string Prefix = "JOB_ERROR_CODE_";
        var values = AnalysisServiceReflection.Descriptor.EnumTypes.Single(e => e.Name == nameof(JobErrorCode)).Values;
        // Every gRPC code but OK has a value.
        Assert.Equal(Enum.GetValues<Grpc.Core.StatusCode>().Length - 1, values.Count - 1);
        foreach (var value in values.Where(v => v.Number != 0))
        {
            Assert.StartsWith(Prefix, value.Name, StringComparison.Ordinal);
            string name = value.Name[Prefix.Length..];
            var grpc = Enum.GetValues<Grpc.Core.StatusCode>().Single(c => string.Equals(c.ToString(), name.Replace("_", "", StringComparison.Ordinal), StringComparison.OrdinalIgnoreCase));
            Assert.Equal((int)grpc, value.Number);
            Assert.Equal((JobErrorCode)value.Number, JobMapping.ErrorStatus(name));
        }
        Assert.Equal(JobErrorCode.Unspecified, JobMapping.ErrorStatus(""));
        Assert.Equal(JobErrorCode.Unspecified, JobMapping.ErrorStatus(null));
        // A name no worker writes (an imported record may hold anything) is UNKNOWN, as gRPC maps an unknown status; OK is no error code.
        Assert.Equal(JobErrorCode.Unknown, JobMapping.ErrorStatus("EXPLODED"));
        Assert.Equal(JobErrorCode.Unknown, JobMapping.ErrorStatus("OK"));
    }
}
