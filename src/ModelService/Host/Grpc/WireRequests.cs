using Grpc.Core;
using InterpMesh.Contracts.V1;
using InterpMesh.Runtime.Loading;
using Intervention = InterpMesh.Runtime.Hooks.Intervention;
using InterventionOp = InterpMesh.Runtime.Hooks.InterventionOp;

namespace InterpMesh.ModelService.Grpc;

/// <summary>Validates and converts request fields shared by Run and Generate; errors say which field and how to fix it.</summary>
internal static class WireRequests
{
    public static List<IReadOnlyList<int>> Rows(LoadedModel model, IEnumerable<Input> inputs, string field, int maxBatch)
    {
        var rows = new List<IReadOnlyList<int>>();
        foreach (var input in inputs)
        {
            int[] ids = input.ContentCase switch
            {
                Input.ContentOneofCase.Text => model.RequireTokenizer().Encode(input.Text),
                Input.ContentOneofCase.Tokens => [.. input.Tokens.Ids],
                _ => throw new ArgumentException($"{field}[{rows.Count}] is empty: set text or tokens"),
            };
            if (ids.Length == 0)
                throw new ArgumentException($"{field}[{rows.Count}] has no tokens");
            if (ids.Length > model.Config.ContextLength)
                throw new ArgumentException($"{field}[{rows.Count}] has {ids.Length} tokens, more than the model's context length of {model.Config.ContextLength}");
            foreach (var id in ids)
            {
                if (id < 0 || id >= model.Config.VocabSize)
                    throw new ArgumentException($"{field}[{rows.Count}] has token id {id}, outside the vocabulary (0..{model.Config.VocabSize - 1})");
            }
            rows.Add(ids);
        }
        if (rows.Count == 0)
            throw new ArgumentException($"{field} is empty; send at least one");
        if (rows.Count > maxBatch)
            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"{rows.Count} {field} exceed this server's batch limit of {maxBatch}; split the request"));
        return rows;
    }

    /// <summary>Converts interventions; creates tensors, so call it on the torch worker.</summary>
    public static List<Intervention> Interventions(IEnumerable<Contracts.V1.Intervention> wire) =>
        wire.Select((iv, i) =>
        {
            var op = iv.Op switch
            {
                Contracts.V1.InterventionOp.Add => InterventionOp.Add,
                Contracts.V1.InterventionOp.Set => InterventionOp.Set,
                Contracts.V1.InterventionOp.Scale => InterventionOp.Scale,
                Contracts.V1.InterventionOp.ZeroAblate => InterventionOp.ZeroAblate,
                Contracts.V1.InterventionOp.MeanAblate => InterventionOp.MeanAblate,
                _ => throw new ArgumentException($"interventions[{i}] on '{iv.Hook}' has no op; use ADD, SET, SCALE, ZERO_ABLATE or MEAN_ABLATE"),
            };
            if (op == InterventionOp.Scale && !double.IsFinite(iv.Scale))
                throw new ArgumentException($"interventions[{i}]: scale must be finite");
            var value = iv.Value is null || iv.Value.Dtype == DType.Unspecified && iv.Value.Data.IsEmpty ? null : TensorWire.FromWire(iv.Value, $"interventions[{i}].value");
            return new Intervention(iv.Hook, op, value, iv.Scale,
                iv.Heads.Count > 0 ? iv.Heads.ToList() : null, iv.Positions.Count > 0 ? iv.Positions.ToList() : null);
        }).ToList();
}
