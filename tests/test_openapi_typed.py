"""Every response the hub's REST API documents has a typed schema: generated clients get no untyped maps."""

from __future__ import annotations

from typing import Any

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub


def free_form(schema: dict[str, Any], components: dict[str, Any], seen: tuple[str, ...] = ()) -> str | None:
    """Where `schema` lets anything through ({} , an object without properties, Any items), or None."""
    if not schema:
        return "an empty schema"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return None if name in seen else free_form(components[name], components, seen + (name,))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            for option in schema[key]:
                if option.get("type") != "null" and (why := free_form(option, components, seen)):
                    return why
            return None
    kind = schema.get("type")
    if kind == "array":
        return free_form(schema.get("items", {}), components, seen)
    if kind == "object" or (kind is None and not ({"enum", "const", "format"} & set(schema))):
        for name, sub in schema.get("properties", {}).items():
            if why := free_form(sub, components, seen):
                return f"{name}: {why}"
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return free_form(extra, components, seen)
        if "properties" not in schema:
            return "an object without properties"
    return None


def test_no_route_answers_a_free_form_schema(tmp_path):
    hub = Hub(HubConfig.from_keys({"data_dir": tmp_path / "hub", "http.port": 0, "grpc.port": 0}))
    try:
        spec = hub.app.openapi()
    finally:
        hub.stop()
    components = spec.get("components", {}).get("schemas", {})
    problems: dict[str, str] = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for code, response in op.get("responses", {}).items():
                for content_type, content in response.get("content", {}).items():
                    why = free_form(content.get("schema", {}), components)
                    if why:
                        problems[f"{method.upper()} {path} {code}"] = f"{content_type}: {why}"
    assert len(spec["paths"]) > 30
    assert not problems, "free-form response schemas:\n" + "\n".join(
        f"{op} {why}" for op, why in sorted(problems.items())
    )


def test_the_checker_catches_what_it_should():
    assert free_form({}, {}) and free_form({"type": "object"}, {})
    assert free_form({"type": "array", "items": {}}, {})
    assert free_form({"$ref": "#/components/schemas/A"}, {"A": {"type": "object", "properties": {"x": {}}}})
    assert free_form({"type": "object", "properties": {"x": {"type": "integer"}}}, {}) is None
    assert free_form({"type": "string", "format": "binary"}, {}) is None
