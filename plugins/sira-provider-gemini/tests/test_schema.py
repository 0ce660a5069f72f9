"""JSON schema → Gemini Schema: what is kept, rewritten and dropped."""

from __future__ import annotations

from typing import Any

import pytest

from sira_provider_gemini import to_gemini_schema
from sira_provider_gemini._schema import SchemaError


def test_unsupported_keywords_are_dropped_recursively() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "x",
        "type": "object",
        "title": "Order",
        "strict": True,
        "additionalProperties": False,
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$", "examples": ["AB"]}},
                },
            },
            "total": {
                "type": "number",
                "minimum": 0,
                "exclusiveMaximum": 100,
                "multipleOf": 0.01,
                "format": "double",
            },
            "email": {"type": "string", "format": "email", "default": "a@b.c"},
            "when": {"type": "string", "format": "date-time"},
            "count": {"type": "integer", "format": "int32", "maximum": 9},
        },
        "required": ["items", "missing"],
    }
    assert to_gemini_schema(schema) == {
        "type": "object",
        "title": "Order",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]+$"}}},
            },
            "total": {"type": "number", "minimum": 0, "format": "double"},
            "email": {"type": "string", "default": "a@b.c"},  # Gemini knows only enum/date-time formats
            "when": {"type": "string", "format": "date-time"},
            "count": {"type": "integer", "maximum": 9, "format": "int32"},
        },
        "required": ["items"],  # "missing" is not a property
    }


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ({"type": ["string", "integer"]}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
        ({"type": "null"}, {"nullable": True}),
        (
            {"anyOf": [{"type": "integer"}, {"type": "null"}], "description": "maybe"},
            {"type": "integer", "description": "maybe", "nullable": True},
        ),
        (
            {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
            {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
        ),
        ({"const": "fixed"}, {"type": "string", "enum": ["fixed"]}),
        ({"enum": ["a", "b"]}, {"type": "string", "enum": ["a", "b"]}),
        ({"type": "integer", "enum": [1, 2]}, {"type": "integer"}),  # Gemini enums are strings only
        (
            {
                "allOf": [
                    {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {}}},
                ]
            },
            {"properties": {"a": {"type": "string"}, "b": {}}, "required": ["a"]},
        ),
        ({"type": "object", "properties": {}}, {"type": "object"}),
        (
            {"type": "object", "properties": {"b": {}, "a": {}}, "propertyOrdering": ["a", "b"]},
            {"type": "object", "properties": {"b": {}, "a": {}}, "propertyOrdering": ["a", "b"]},
        ),
    ],
)
def test_rewrites(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_gemini_schema(schema) == expected


def test_local_refs_are_inlined() -> None:
    schema = {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "definitions": {"Name": {"type": "string"}},
        "properties": {
            "start": {"$ref": "#/$defs/Point", "description": "where it starts"},
            "end": {"$ref": "#/$defs/Point"},
            "label": {"allOf": [{"$ref": "#/definitions/Name"}], "maxLength": 5},
        },
    }
    point = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    assert to_gemini_schema(schema) == {
        "type": "object",
        "properties": {
            "start": {**point, "description": "where it starts"},
            "end": point,
            "label": {"type": "string", "maxLength": 5},
        },
    }


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$ref": "https://example.com/schema.json"}, "not a local definition"),
        ({"$ref": "#/$defs/Missing"}, "names no definition"),
        (
            {
                "$defs": {
                    "Tree": {"type": "object", "properties": {"kids": {"items": {"$ref": "#/$defs/Tree"}}}}
                },
                "$ref": "#/$defs/Tree",
            },
            "recursive",
        ),
    ],
)
def test_unexpressible_schemas_are_refused(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        to_gemini_schema(schema)


def test_depth_is_bounded() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(60):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="deeper than"):
        to_gemini_schema(schema)


def test_boolean_and_empty_schemas_mean_anything() -> None:
    assert to_gemini_schema({"type": "object", "properties": {"any": True, "also": {}}}) == {
        "type": "object",
        "properties": {"any": {}, "also": {}},
    }
