using InterpMesh.ToyModels.Tasks;

namespace InterpMesh.ToyModels;

/// <summary>The toy models InterpMesh trains and ships, by name.</summary>
public static class ToyCatalog
{
    public static IReadOnlyList<string> Names { get; } = ["induction", "retrieval", "concepts", "functions"];

    public static ToyTask Get(string name) => name switch
    {
        "induction" => new InductionTask(),
        "retrieval" => new RetrievalTask(),
        "concepts" => new ConceptsTask(),
        "functions" => new FunctionsTask(),
        _ => throw new ArgumentException($"unknown toy model '{name}'; known: {string.Join(", ", Names)}"),
    };
}
