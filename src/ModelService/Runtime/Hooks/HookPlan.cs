using InterpMesh.Runtime.Architectures;
using static TorchSharp.torch;

namespace InterpMesh.Runtime.Hooks;

/// <summary>The kinds of <see cref="PositionSelection"/>.</summary>
public enum PositionKind
{
    /// <summary>Every position (including padding).</summary>
    All,
    /// <summary>The last real token of each row.</summary>
    Last,
    /// <summary>Explicit indices.</summary>
    Indices,
}

/// <summary>Which positions of a captured activation to keep.</summary>
public sealed record PositionSelection
{
    private PositionSelection(PositionKind kind, IReadOnlyList<int>? indices) { Kind = kind; Indices = indices; }

    /// <summary>Every position (including padding).</summary>
    public static PositionSelection All { get; } = new(PositionKind.All, null);

    /// <summary>The last real (non-padding) token of each row.</summary>
    public static PositionSelection Last { get; } = new(PositionKind.Last, null);

    /// <summary>Explicit indices into the (padded) sequence; negative indices count from the end.</summary>
    public static PositionSelection At(params int[] indices) => new(PositionKind.Indices, indices);

    public PositionKind Kind { get; }
    public IReadOnlyList<int>? Indices { get; }

    /// <summary>
    /// This selection of a whole-forward tensor <paramref name="x"/> at <paramref name="hook"/>, in
    /// <paramref name="dtype"/>, exactly as a capture selects it (<paramref name="lastRealIndex"/>:
    /// each row's last real position, <c>[batch]</c> int64). A new tensor, never a view of x.
    /// </summary>
    public Tensor Apply(HookInfo hook, Tensor x, ScalarType dtype, Tensor lastRealIndex) =>
        HookContext.Select(hook, x, this, dtype, lastRealIndex, 0);
}

/// <summary>What to capture: hook names or globs, which positions, in which dtype.</summary>
public sealed record CaptureRequest(IReadOnlyList<string> Hooks, PositionSelection? Positions = null, ScalarType DType = ScalarType.Float32);

/// <summary>
/// The request-scoped plan for one forward (or one generation): what to capture and what to change.
/// Built per request and never stored on the model, so concurrent requests cannot see each other's
/// hooks. Construct with <see cref="Build"/>, which resolves globs and validates names.
/// </summary>
public sealed class HookPlan
{
    private readonly Dictionary<string, (PositionSelection Positions, ScalarType DType)> captures;
    private readonly Dictionary<string, List<Intervention>> interventions;

    private HookPlan(
        Dictionary<string, (PositionSelection, ScalarType)> captures,
        Dictionary<string, List<Intervention>> interventions,
        int deepestCaptureOrder,
        IReadOnlySet<string> active,
        IReadOnlyList<InterventionTarget> targets,
        IReadOnlySet<string> gradients)
    {
        Targets = targets;
        GradientHooks = gradients;
        this.captures = captures;
        this.interventions = interventions;
        DeepestCaptureOrder = deepestCaptureOrder;
        Active = active;
    }

    /// <summary>A plan that captures nothing and changes nothing.</summary>
    public static HookPlan Empty { get; } = new([], [], -1, new HashSet<string>(), [], new HashSet<string>());

    /// <summary>The plan's interventions in request order, each with the hooks it matched.</summary>
    public IReadOnlyList<InterventionTarget> Targets { get; }

    /// <summary>Forward order of the deepest captured hook (-1 when nothing is captured).</summary>
    public int DeepestCaptureOrder { get; }

    /// <summary>Hook names that have a capture or an intervention.</summary>
    public IReadOnlySet<string> Active { get; }

    public IEnumerable<string> CapturedHooks => captures.Keys;

    /// <summary>Hooks whose activation gets a gradient probe (a request that differentiates a metric), after their interventions.</summary>
    public IReadOnlySet<string> GradientHooks { get; }

    /// <param name="catalogue">The model's hooks.</param>
    /// <param name="captureRequests">What to capture.</param>
    /// <param name="interventionList">What to change.</param>
    /// <param name="gradientHooks">Hook names or globs to differentiate at (see <see cref="HookSegment.Probe"/>).</param>
    public static HookPlan Build(HookCatalogue catalogue, IEnumerable<CaptureRequest>? captureRequests, IEnumerable<Intervention>? interventionList,
        IEnumerable<string>? gradientHooks = null)
    {
        var caps = new Dictionary<string, (PositionSelection, ScalarType)>(StringComparer.Ordinal);
        int deepest = -1;
        foreach (var request in captureRequests ?? [])
        {
            if (request.DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
                throw new InvalidRequestException($"capture dtype {request.DType} is not supported; use float32, bfloat16 or float16");
            foreach (var hook in catalogue.Resolve(request.Hooks))
            {
                caps[hook.Name] = (request.Positions ?? PositionSelection.All, request.DType);
                deepest = Math.Max(deepest, hook.Order);
            }
        }
        var ivs = new Dictionary<string, List<Intervention>>(StringComparer.Ordinal);
        var targets = new List<InterventionTarget>();
        foreach (var iv in interventionList ?? [])
        {
            var matched = catalogue.Resolve([iv.Hook]);
            targets.Add(new InterventionTarget(iv, matched.Select(h => h.Name).ToList()));
            foreach (var hook in matched)
            {
                if (iv.Heads is not null && hook.Layout == HookLayout.Positional)
                    throw new InvalidRequestException($"intervention on '{hook.Name}' names heads, but that hook has no head dimension; per-head hooks are attn.hook_q/k/v/z/result/pattern/attn_scores");
                if (iv.Op is InterventionOp.Add or InterventionOp.Set or InterventionOp.MeanAblate && iv.Value is null)
                    throw new InvalidRequestException($"intervention {iv.Op} on '{hook.Name}' needs a value tensor");
                if (!ivs.TryGetValue(hook.Name, out var list))
                    ivs[hook.Name] = list = [];
                list.Add(iv);
            }
        }
        var gradients = new HashSet<string>(StringComparer.Ordinal);
        if (gradientHooks is not null && gradientHooks.Any())
            gradients.UnionWith(catalogue.Resolve(gradientHooks).Select(h => h.Name));
        var active = new HashSet<string>(caps.Keys, StringComparer.Ordinal);
        active.UnionWith(ivs.Keys);
        active.UnionWith(gradients);
        return new HookPlan(caps, ivs, deepest, active, targets, gradients);
    }

    internal bool IsActive(string name) => Active.Count != 0 && Active.Contains(name);

    internal bool TryGetCapture(string name, out (PositionSelection Positions, ScalarType DType) spec) => captures.TryGetValue(name, out spec);

    internal bool TryGetInterventions(string name, out List<Intervention> list) => interventions.TryGetValue(name, out list!);
}
