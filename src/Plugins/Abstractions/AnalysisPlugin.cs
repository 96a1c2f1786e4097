using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Schema;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace InterpMesh.Plugins;

/// <summary>
/// A plugin whose parameters are one C# type (SDK 1.2): the manifest's JSON Schema is generated from
/// <typeparamref name="TParameters"/> (snake_case names, <c>required</c> members, defaults from
/// property initialisers, <see cref="DescriptionAttribute"/>, <see cref="RangeAttribute"/>,
/// <see cref="MinLengthAttribute"/>, <see cref="MaxLengthAttribute"/>, enums as their snake_case
/// names, unknown members refused), and
/// each run receives the parameters parsed into that type. Parameters that do not fit end the job
/// with INVALID_ARGUMENT naming the property (the gateway checks the schema before the run; the
/// parse checks again for direct callers).
/// </summary>
/// <typeparam name="TParameters">A class with init-only properties and a parameterless constructor.</typeparam>
public abstract class AnalysisPlugin<TParameters> : IAnalysisPlugin
    where TParameters : class
{
    /// <param name="id">Unique id, lower case letters, digits and dashes; the plugin's folder name.</param>
    /// <param name="version">The plugin's own version.</param>
    /// <param name="description">One or two sentences shown by <c>interpmesh plugins</c>.</param>
    /// <param name="produces">What results contain, e.g. <c>table:norms</c>, <c>figure:norms</c>.</param>
    protected AnalysisPlugin(string id, string version, string description, IReadOnlyList<string> produces)
        => Manifest = new PluginManifest { Id = id, Version = version, Description = description, SdkVersion = SdkVersion.Current, ParameterSchema = PluginParameters.SchemaOf<TParameters>(), Produces = produces };

    /// <inheritdoc/>
    public PluginManifest Manifest { get; }

    /// <summary>Parses <paramref name="parameters"/> into <typeparamref name="TParameters"/> and runs the analysis.</summary>
    /// <exception cref="InvalidParametersException">The parameters do not fit <typeparamref name="TParameters"/>.</exception>
    public Task<PluginResult> RunAsync(JsonElement parameters, IAnalysisContext context)
        => RunAsync(PluginParameters.Parse<TParameters>(parameters), context);

    /// <summary>Runs the analysis with its parameters parsed.</summary>
    protected abstract Task<PluginResult> RunAsync(TParameters parameters, IAnalysisContext context);
}

/// <summary>Typed plugin parameters: the JSON conventions, schema generation and parsing <see cref="AnalysisPlugin{TParameters}"/> uses.</summary>
public static class PluginParameters
{
    /// <summary>snake_case names and enum values, unknown members refused, nullability and <c>required</c> respected.</summary>
    public static JsonSerializerOptions Options { get; } = CreateOptions();

    private static JsonSerializerOptions CreateOptions()
    {
        var options = new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
            UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
            RespectNullableAnnotations = true,
            RespectRequiredConstructorParameters = true,
            // A "mode" discriminator may come anywhere in the object, as users write it.
            AllowOutOfOrderMetadataProperties = true,
            TypeInfoResolver = new DefaultJsonTypeInfoResolver(),
        };
        options.Converters.Add(new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower));
        options.MakeReadOnly();
        return options;
    }

    /// <summary>
    /// The attribute limits System.Text.Json does not check, on this object and the parameter objects
    /// inside it (also those in lists). A <see cref="RangeAttribute"/> on a list limits each item.
    /// </summary>
    private static void Check(object value, string path)
    {
        foreach (var property in value.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            string name = $"{path}.{Options.PropertyNamingPolicy!.ConvertName(property.Name)}";
            var current = property.GetValue(value);
            if (current is null)
                continue;
            var list = current as System.Collections.ICollection;
            if (property.GetCustomAttribute<RangeAttribute>() is { } range)
            {
                if (list is null)
                {
                    CheckRange(range, current, name);
                }
                else
                {
                    int i = 0;
                    foreach (var item in list)
                        CheckRange(range, item, $"{name}[{i++}]");
                }
            }
            if (property.GetCustomAttribute<MinLengthAttribute>() is { } minLength && list is not null && list.Count < minLength.Length)
                throw new InvalidParametersException($"{name}: has {list.Count} items, needs at least {minLength.Length}");
            if (property.GetCustomAttribute<MaxLengthAttribute>() is { } maxLength && list is not null && list.Count > maxLength.Length)
                throw new InvalidParametersException($"{name}: has {list.Count} items, at most {maxLength.Length} allowed");
            if (IsParameterObject(property.PropertyType))
            {
                Check(current, name);
            }
            else if (list is not null)
            {
                int i = 0;
                foreach (var item in list)
                {
                    if (item is not null && IsParameterObject(item.GetType()))
                        Check(item, $"{name}[{i}]");
                    i++;
                }
            }
        }
    }

    /// <summary>A nested parameter object: a class of the plugin's, not a string or a collection.</summary>
    private static bool IsParameterObject(Type type)
        => type.IsClass && type != typeof(string) && !typeof(System.Collections.IEnumerable).IsAssignableFrom(type);

    private static void CheckRange(RangeAttribute range, object? value, string name)
    {
        if (value is null)
            return;
        double x = Convert.ToDouble(value, System.Globalization.CultureInfo.InvariantCulture);
        double min = Convert.ToDouble(range.Minimum, System.Globalization.CultureInfo.InvariantCulture), max = Convert.ToDouble(range.Maximum, System.Globalization.CultureInfo.InvariantCulture);
        if (x < min)
            throw new InvalidParametersException($"{name}: {x} is below the minimum {min}");
        if (x > max)
            throw new InvalidParametersException($"{name}: {x} is above the maximum {max}");
    }

    /// <summary>System.Text.Json's complaint in the gateway's words (<c>parameters.name …</c>), without .NET type names.</summary>
    private static string Explain<T>(JsonException e, JsonElement parameters)
    {
        string path = e.Path is { Length: > 1 } p ? "parameters" + p[1..] : "parameters";
        string message = e.Message;
        // The top-level names of the class the parameters were read as: the mode's, with the discriminator.
        var modes = Modes(typeof(T));
        string? mode = modes is { } d && parameters.ValueKind == JsonValueKind.Object && parameters.TryGetProperty(d.Property, out var m) && m.ValueKind == JsonValueKind.String
            ? m.GetString() : modes?.Default;
        var type = typeof(T).GetCustomAttributes<JsonDerivedTypeAttribute>().FirstOrDefault(x => x.TypeDiscriminator as string == mode)?.DerivedType ?? typeof(T);
        var known = (modes is { } md ? [md.Property] : Array.Empty<string>())
            .Concat(type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Select(x => Options.PropertyNamingPolicy!.ConvertName(x.Name)));
        var missing = System.Text.RegularExpressions.Regex.Match(message, "missing required properties including: (.*)\\.");
        if (missing.Success)
            return string.Join("; ", missing.Groups[1].Value.Split(", ").Select(n => $"{path}.{n.Trim('\'')} is required"));
        var unknown = System.Text.RegularExpressions.Regex.Match(message, "The JSON property '([^']*)' could not be mapped");
        if (unknown.Success)
        {
            string name = unknown.Groups[1].Value;
            string parent = path.EndsWith("." + name, StringComparison.Ordinal) ? path[..^(name.Length + 1)] : path;
            string names = parent == "parameters" ? $"; known: {string.Join(", ", known)}" : "";
            return $"{parent}.{(name.Length > 40 ? name[..40] + "…" : name)} is not a known parameter{names}";
        }
        if (message.Contains("could not be converted to", StringComparison.Ordinal))
            return $"{path}: has the wrong type for this parameter (see the plugin's parameter schema)";
        return $"{path}: {message.Split(" Path: ", 2)[0]}";
    }

    /// <summary>The JSON Schema of <typeparamref name="T"/>, with descriptions, defaults and ranges.</summary>
    public static JsonObject SchemaOf<T>() where T : class
    {
        // One instance per class that declares parameters (the parameters, a mode, a nested settings
        // class) gives the defaults; an abstract mode base reads them from one of its modes.
        var instances = new Dictionary<Type, object?>();
        object? DefaultsOf(Type declaring)
        {
            if (instances.TryGetValue(declaring, out var cached))
                return cached;
            var concrete = !declaring.IsAbstract ? declaring
                : typeof(T).GetCustomAttributes<JsonDerivedTypeAttribute>().Select(d => d.DerivedType).FirstOrDefault(d => !d.IsAbstract && declaring.IsAssignableFrom(d));
            object? instance = null;
            try
            {
                instance = concrete is null ? null : Activator.CreateInstance(concrete);
            }
            catch (MissingMethodException)
            {
                // No parameterless constructor: the schema simply carries no defaults for this class.
            }
            return instances[declaring] = instance;
        }
        var exporter = new JsonSchemaExporterOptions
        {
            TreatNullObliviousAsNonNullable = true,
            TransformSchemaNode = (context, node) =>
            {
                // A member or type read by its own converter states its schema (the exporter knows none).
                var declared = context.PropertyInfo?.AttributeProvider?.GetCustomAttributes(typeof(ParameterSchemaAttribute), true).FirstOrDefault() as ParameterSchemaAttribute
                    ?? context.TypeInfo.Type.GetCustomAttribute<ParameterSchemaAttribute>();
                if (declared is not null)
                    node = JsonNode.Parse(declared.Schema)!;
                if (node is not JsonObject schema || context.PropertyInfo is not { } property)
                    return node;
                var attributes = property.AttributeProvider;
                if (attributes?.GetCustomAttributes(typeof(DescriptionAttribute), true).FirstOrDefault() is DescriptionAttribute description)
                    schema["description"] = description.Description;
                if (attributes?.GetCustomAttributes(typeof(RangeAttribute), true).FirstOrDefault() is RangeAttribute range)
                {
                    // An open end (int.MaxValue, infinity) is no limit worth stating.
                    double min = Convert.ToDouble(range.Minimum, System.Globalization.CultureInfo.InvariantCulture);
                    double max = Convert.ToDouble(range.Maximum, System.Globalization.CultureInfo.InvariantCulture);
                    // On a list, the range limits each item.
                    var limited = schema["items"] as JsonObject ?? schema;
                    if (double.IsFinite(min) && min > int.MinValue)
                        limited["minimum"] = JsonValue.Create(min);
                    if (double.IsFinite(max) && max < int.MaxValue)
                        limited["maximum"] = JsonValue.Create(max);
                }
                if (attributes?.GetCustomAttributes(typeof(MaxLengthAttribute), true).FirstOrDefault() is MaxLengthAttribute maxLength)
                    schema["maxItems"] = maxLength.Length;
                if (attributes?.GetCustomAttributes(typeof(MinLengthAttribute), true).FirstOrDefault() is MinLengthAttribute minLength)
                    schema["minItems"] = minLength.Length;
                if (!property.IsRequired && context.TypeInfo.Type != typeof(T)
                    && DefaultsOf(property.DeclaringType) is { } defaults && property.Get?.Invoke(defaults) is { } value)
                {
                    schema["default"] = JsonSerializer.SerializeToNode(value, property.PropertyType, Options);
                }
                return schema;
            },
        };
        var result = (JsonObject)JsonSchemaExporter.GetJsonSchemaAsNode(Options, typeof(T), exporter);
        // The exporter writes a class met twice (the rows of two modes) as a $ref to the first; the
        // schema is self-contained without them, and validators need not resolve pointers.
        result = (JsonObject)Inline(result, result, 0)!;
        if (Modes(typeof(T)) is { } modes && result["anyOf"] is JsonArray forms)
        {
            // With a default mode the discriminator is optional at the top; the forms decide.
            if (modes.Default is not null && result["required"] is JsonArray top)
            {
                foreach (var r in top.Where(r => r?.GetValue<string>() == modes.Property).ToList())
                    top.Remove(r);
                if (top.Count == 0)
                    result.Remove("required");
            }
            // Every mode's form requires the discriminator, except the default mode's, which says it is the default.
            foreach (var form in forms.OfType<JsonObject>())
            {
                if (form["properties"]?[modes.Property] is not JsonObject mode)
                    continue;
                var required = form["required"] as JsonArray ?? (JsonArray)(form["required"] = new JsonArray());
                bool isDefault = modes.Default is { } d && mode["const"]?.GetValue<string>() == d;
                bool listed = required.Any(r => r?.GetValue<string>() == modes.Property);
                if (isDefault)
                {
                    mode["default"] = modes.Default;
                    foreach (var r in required.Where(r => r?.GetValue<string>() == modes.Property).ToList())
                        required.Remove(r);
                }
                else if (!listed)
                {
                    required.Insert(0, modes.Property);
                }
            }
        }
        return result;
    }

    /// <summary>A copy of <paramref name="node"/> with every local <c>$ref</c> replaced by what it points to (a recursive type stays a reference past 32 levels).</summary>
    private static JsonNode? Inline(JsonNode? node, JsonObject root, int depth)
    {
        switch (node)
        {
            case JsonObject o when o["$ref"] is JsonValue r && r.TryGetValue<string>(out var pointer) && pointer.StartsWith("#/", StringComparison.Ordinal) && depth < 32
                && Resolve(root, pointer) is JsonObject target:
                var inlined = (JsonObject)Inline(target, root, depth + 1)!;
                foreach (var (key, value) in o.Where(kv => kv.Key != "$ref"))
                    inlined[key] = Inline(value, root, depth);
                return inlined;
            case JsonObject o:
                return new JsonObject(o.Select(kv => KeyValuePair.Create(kv.Key, Inline(kv.Value, root, depth))));
            case JsonArray a:
                return new JsonArray([.. a.Select(x => Inline(x, root, depth))]);
            default:
                return node?.DeepClone();
        }
    }

    /// <summary>The node a JSON Pointer (<c>#/anyOf/0/properties/rows/items</c>) names in <paramref name="root"/>, or null.</summary>
    private static JsonNode? Resolve(JsonObject root, string pointer)
    {
        JsonNode? at = root;
        foreach (var segment in pointer[2..].Split('/').Select(x => x.Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal)))
        {
            at = at switch
            {
                JsonObject o => o[segment],
                JsonArray a when int.TryParse(segment, System.Globalization.CultureInfo.InvariantCulture, out int i) && i >= 0 && i < a.Count => a[i],
                _ => null,
            };
        }
        return at;
    }

    /// <summary>The discriminator property and default mode of a polymorphic parameters type, or null.</summary>
    private static (string Property, string? Default)? Modes(Type type)
    {
        if (type.GetCustomAttribute<JsonPolymorphicAttribute>() is not { } polymorphic)
            return null;
        return (polymorphic.TypeDiscriminatorPropertyName ?? "$type", type.GetCustomAttribute<DefaultModeAttribute>()?.Mode);
    }

    /// <summary>
    /// Parses parameters into <typeparamref name="T"/>; anything that does not fit (a wrong type, an
    /// unknown or missing member, a value outside its <see cref="RangeAttribute"/>, too few items)
    /// throws <see cref="InvalidParametersException"/> naming the property as <c>parameters.name</c>.
    /// </summary>
    public static T Parse<T>(JsonElement parameters) where T : class
    {
        T? value;
        try
        {
            if (Modes(typeof(T)) is { Default: { } mode } modes && parameters.ValueKind == JsonValueKind.Object && !parameters.TryGetProperty(modes.Property, out _))
            {
                var withMode = JsonSerializer.SerializeToNode(parameters)!.AsObject();
                withMode[modes.Property] = mode;
                value = withMode.Deserialize<T>(Options);
            }
            else
            {
                value = parameters.Deserialize<T>(Options);
            }
        }
        catch (JsonException e)
        {
            throw new InvalidParametersException(Explain<T>(e, parameters), e);
        }
        if (value is null)
            throw new InvalidParametersException("parameters: a JSON object is required");
        Check(value, "parameters");
        return value;
    }
}

/// <summary>
/// On a polymorphic parameters type (<see cref="JsonPolymorphicAttribute"/> with a
/// <c>TypeDiscriminatorPropertyName</c> such as <c>mode</c>, one <see cref="JsonDerivedTypeAttribute"/>
/// per mode): the mode parameters without one are read as, so <c>{"texts": […]}</c> keeps meaning
/// the plugin's default analysis.
/// </summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class DefaultModeAttribute(string mode) : Attribute
{
    /// <summary>The discriminator value of the default mode.</summary>
    public string Mode { get; } = mode;
}

/// <summary>
/// The JSON Schema of a parameter System.Text.Json's schema exporter cannot describe: a property or
/// type read by its own <see cref="JsonConverter"/> (for example a label that may be a string, an
/// integer or a boolean). <see cref="PluginParameters.SchemaOf{T}"/> writes this schema in its place.
/// </summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Class | AttributeTargets.Struct, Inherited = false)]
public sealed class ParameterSchemaAttribute(string schema) : Attribute
{
    /// <summary>The schema as JSON text, e.g. <c>{"type": ["string", "integer", "boolean"]}</c>.</summary>
    public string Schema { get; } = schema;
}
