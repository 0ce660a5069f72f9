from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sira_provider_mock._schema import MAX_DEPTH, example_from_schema


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A small validator for the schema subset generated below (the package has no validator)."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(name in value for name in schema.get("required", []))
            and all(conforms(value[name], sub) for name, sub in properties.items() if name in value)
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and len(value) >= schema.get("minItems", 0)
            and len(value) <= schema.get("maxItems", len(value))
            and all(conforms(item, schema.get("items", {})) for item in value)
        )
    if kind == "string":
        return isinstance(value, str) and schema.get("minLength", 0) <= len(value) <= schema.get(
            "maxLength", 10**9
        )
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "integer" and not float(value).is_integer():
            return False
        return schema.get("minimum", value) <= value <= schema.get("maximum", value)
    if kind == "boolean":
        return isinstance(value, bool)
    return True


@st.composite
def _number_schema(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": draw(st.sampled_from(["integer", "number"]))}
    low = draw(st.none() | st.integers(-50, 50))
    if low is not None:
        schema["minimum"] = low
    high = draw(st.none() | st.integers(low if low is not None else -50, 60))
    if high is not None:
        schema["maximum"] = high
    return schema


@st.composite
def _string_schema(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    low = draw(st.integers(0, 12))
    if low:
        schema["minLength"] = low
    if draw(st.booleans()):
        schema["maxLength"] = draw(st.integers(low, 20))
    return schema


_leaves = (
    _number_schema()
    | _string_schema()
    | st.just({"type": "boolean"})
    | st.lists(st.integers() | st.text(max_size=5), min_size=1, max_size=3).map(lambda e: {"enum": e})
)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    objects = st.dictionaries(st.text("abcdef", min_size=1, max_size=4), children, max_size=4).flatmap(
        lambda props: st.builds(
            lambda required: {"type": "object", "properties": props, "required": required},
            st.lists(st.sampled_from(sorted(props)) if props else st.nothing(), unique=True),
        )
    )
    arrays = st.builds(
        lambda items, low: {"type": "array", "items": items, "minItems": low},
        children,
        st.integers(0, 3),
    )
    return objects | arrays


def _nesting(schema: dict[str, Any]) -> int:
    children = [*schema.get("properties", {}).values(), *([schema["items"]] if "items" in schema else [])]
    return 1 + max((_nesting(child) for child in children), default=0)


@settings(max_examples=150, deadline=None)
@given(st.recursive(_leaves, _extend, max_leaves=12))
def test_example_conforms_to_its_schema(schema: dict[str, Any]) -> None:
    assume(_nesting(schema) < MAX_DEPTH)  # deeper (recursive) schemas are cut short on purpose
    value = example_from_schema(schema)
    assert conforms(value, schema), (schema, value)
    assert example_from_schema(schema) == value


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "mock"),
        ({"type": "string", "format": "date"}, "2024-01-01"),
        ({"type": "string", "minLength": 10}, "mockmockmo"),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "number", "maximum": 0.25}, 0.25),
        ({"type": ["null", "boolean"]}, True),
        ({"const": "fixed"}, "fixed"),
        ({"type": "integer", "default": 42}, 42),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, 1),
        (
            {
                "allOf": [
                    {"properties": {"a": {"type": "string"}}},
                    {"properties": {"b": {"type": "boolean"}}},
                ]
            },
            {"a": "mock", "b": True},
        ),
        ({"type": "object", "required": ["undeclared"]}, {"undeclared": "mock"}),
        ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}, [1, "mock"]),
        (
            {
                "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
                "type": "object",
                "properties": {"at": {"$ref": "#/$defs/Point"}},
            },
            {"at": {"x": 1}},
        ),
    ],
)
def test_examples(schema: dict[str, Any], expected: Any) -> None:
    assert example_from_schema(schema) == expected


def test_recursive_schema_terminates() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            }
        },
        "$ref": "#/$defs/Node",
    }
    value = example_from_schema(schema)
    depth = 0
    while value and value.get("children"):
        value = value["children"][0]
        depth += 1
    assert depth < 10
