using System.Text.Json;
using System.Text.Json.Nodes;

namespace InterpMesh.Gateway.Plugins;

/// <summary>
/// Checks parameters against a plugin's JSON Schema before the run starts, so a typo fails at once
/// with the property named instead of minutes into a job. Supports the keywords plugin schemas use,
/// hand-written or generated from a parameters class (SDK 1.2): type, properties, required,
/// additionalProperties (false), enum, const, minimum, maximum, items, minItems, maxItems, and
/// anyOf/oneOf (one form per mode: the errors reported are those of the form whose constants the
/// value matches). Unknown keywords (description, default, …) are ignored.
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
        if (schema.ContainsKey("const") && !SameJson(JsonSerializer.SerializeToElement(schema["const"]), value))
            errors.Add($"{path}: must be {schema["const"]?.ToJsonString() ?? "null"}");
        foreach (string keyword in new[] { "anyOf", "oneOf" })
        {
            if (schema[keyword] is JsonArray forms)
                CheckForms(forms.OfType<JsonObject>().ToList(), keyword == "oneOf", value, path, errors);
        }
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
    /// anyOf/oneOf: the value must fit one form (exactly one for oneOf). When none fits, the errors
    /// of the form whose constant properties the value has (its mode) are reported; when no form's
    /// constants match, the constant properties' allowed values are.
    /// </summary>
    private static void CheckForms(List<JsonObject> forms, bool exactlyOne, JsonElement value, string path, List<string> errors)
    {
        var results = forms.Select(f =>
        {
            var e = new List<string>();
            Check(f, value, path, e);
            return (Form: f, Errors: e);
        }).ToList();
        int fitting = results.Count(r => r.Errors.Count == 0);
        if (fitting == 1 || (fitting > 1 && !exactlyOne))
            return;
        if (fitting > 1)
        {
            errors.Add($"{path}: fits {fitting} of the allowed forms; exactly one is allowed");
            return;
        }
        // The form the value means: every constant property it has matches.
        static IEnumerable<(string Name, JsonNode? Value)> Constants(JsonObject form) =>
            (form["properties"] as JsonObject ?? [])
            .Where(kv => kv.Value is JsonObject p && p.ContainsKey("const"))
            .Select(kv => (kv.Key, kv.Value!["const"]));
        var meant = results.FirstOrDefault(r => value.ValueKind == JsonValueKind.Object && Constants(r.Form).Any()
            && Constants(r.Form).All(c => value.TryGetProperty(c.Name, out var v) ? SameJson(JsonSerializer.SerializeToElement(c.Value), v)
                : r.Form["required"] is not JsonArray req || !req.Any(x => x?.GetValue<string>() == c.Name)));
        if (meant.Form is not null)
        {
            errors.AddRange(meant.Errors);
            return;
        }
        var discriminators = results.SelectMany(r => Constants(r.Form)).GroupBy(c => c.Name).ToList();
        if (discriminators.Count > 0)
        {
            foreach (var d in discriminators)
                errors.Add($"{path}.{d.Key}: must be one of [{string.Join(",", d.Select(c => c.Value?.ToJsonString() ?? "null").Distinct())}]");
            return;
        }
        errors.Add($"{path}: fits none of the {forms.Count} allowed forms; first form: {string.Join("; ", results[0].Errors)}");
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
