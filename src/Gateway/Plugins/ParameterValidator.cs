using System.Text.Json;
using System.Text.Json.Nodes;

namespace InterpMesh.Gateway.Plugins;

/// <summary>
/// Checks parameters against a plugin's JSON Schema before the run starts, so a typo fails at once
/// with the property named instead of minutes into a job. Supports the keywords plugin schemas use:
/// type, properties, required, additionalProperties (false), enum, minimum, maximum, items,
/// minItems, maxItems. Unknown keywords are ignored.
/// </summary>
public static class ParameterValidator
{
    /// <summary>Every problem found, each naming the property path (empty = valid).</summary>
    public static List<string> Validate(JsonObject schema, JsonElement value)
    {
        var errors = new List<string>();
        Check(schema, value, "parameters", errors);
        return errors;
    }

    private static void Check(JsonObject schema, JsonElement value, string path, List<string> errors)
    {
        if (schema["type"] is { } type)
        {
            var allowed = type is JsonArray a ? a.Select(t => t!.GetValue<string>()).ToList() : [type.GetValue<string>()];
            if (!allowed.Any(t => Is(t, value)))
            {
                errors.Add($"{path}: expected {string.Join(" or ", allowed)}, got {Describe(value)}");
                return;
            }
        }
        if (schema["enum"] is JsonArray options && !options.Any(o => SameJson(JsonSerializer.SerializeToElement(o), value)))
            errors.Add($"{path}: {value.GetRawText()} is not one of {options.ToJsonString()}");
        if (value.ValueKind == JsonValueKind.Number)
        {
            double x = value.GetDouble();
            if (schema["minimum"] is { } min && x < min.GetValue<double>())
                errors.Add($"{path}: {x} is below the minimum {min}");
            if (schema["maximum"] is { } max && x > max.GetValue<double>())
                errors.Add($"{path}: {x} is above the maximum {max}");
        }
        if (value.ValueKind == JsonValueKind.Object)
        {
            var properties = schema["properties"] as JsonObject;
            if (schema["required"] is JsonArray required)
            {
                foreach (var r in required.Select(r => r!.GetValue<string>()))
                {
                    if (!value.TryGetProperty(r, out _))
                        errors.Add($"{path}.{r} is required");
                }
            }
            foreach (var p in value.EnumerateObject())
            {
                if (properties?[p.Name] is JsonObject sub)
                    Check(sub, p.Value, $"{path}.{p.Name}", errors);
                else if (schema["additionalProperties"] is JsonValue extra && extra.TryGetValue<bool>(out bool allowed) && !allowed)
                    errors.Add($"{path}.{p.Name} is not a known parameter{(properties is null ? "" : $"; known: {string.Join(", ", properties.Select(kv => kv.Key))}")}");
            }
        }
        if (value.ValueKind == JsonValueKind.Array)
        {
            int n = value.GetArrayLength();
            if (schema["minItems"] is { } minItems && n < minItems.GetValue<int>())
                errors.Add($"{path}: has {n} items, needs at least {minItems}");
            if (schema["maxItems"] is { } maxItems && n > maxItems.GetValue<int>())
                errors.Add($"{path}: has {n} items, at most {maxItems} allowed");
            if (schema["items"] is JsonObject items)
            {
                int i = 0;
                foreach (var item in value.EnumerateArray())
                    Check(items, item, $"{path}[{i++}]", errors);
            }
        }
    }

    /// <summary>
    /// JSON equality that treats numbers it cannot compare as different: DeepEquals throws
    /// ArgumentOutOfRangeException for exponents beyond its range (1e-99999999999999999999), and
    /// no enum member is such a number.
    /// </summary>
    private static bool SameJson(JsonElement a, JsonElement b)
    {
        try
        {
            return JsonElement.DeepEquals(a, b);
        }
        catch (ArgumentOutOfRangeException)
        {
            return false;
        }
    }

    private static bool Is(string type, JsonElement v) => type switch
    {
        "object" => v.ValueKind == JsonValueKind.Object,
        "array" => v.ValueKind == JsonValueKind.Array,
        "string" => v.ValueKind == JsonValueKind.String,
        "number" => v.ValueKind == JsonValueKind.Number,
        "integer" => v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out _),
        "boolean" => v.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => v.ValueKind == JsonValueKind.Null,
        _ => true,
    };

    private static string Describe(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.Number => $"number {v.GetRawText()}",
        JsonValueKind.String => $"string {v.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => $"boolean {v.GetRawText()}",
        _ => v.ValueKind.ToString().ToLowerInvariant(),
    };
}
