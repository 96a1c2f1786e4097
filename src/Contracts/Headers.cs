namespace InterpMesh.Contracts;

/// <summary>Request metadata the mesh's services read, beside <c>authorization: Bearer KEY</c>.</summary>
public static class Headers
{
    /// <summary>The model a gateway routes a ModelService call (or names in a job) to, when it serves several.</summary>
    public const string Model = "interpmesh-model";
}
