"""A deterministic example value for a JSON schema: the arguments of mock tool calls.

Not a validator and not a random generator (hypothesis-jsonschema does that): it picks the one
obvious value per type, honouring what tool schemas commonly use (``const``, ``enum``,
``default``, numeric bounds, string lengths and formats, ``minItems``, ``anyOf``, local ``$ref``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["example_from_schema"]

#: Nesting depth past which recursive schemas stop being expanded.
MAX_DEPTH = 8

_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/mock",
    "url": "https://example.com/mock",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}


def example_from_schema(schema: Any) -> Any:
    """Return a deterministic value that satisfies ``schema`` for the common cases.

    Objects get every declared property (and any required one), strings are ``"mock"``, integers
    and numbers ``1``, booleans ``true``, arrays one item (or ``minItems``), all moved inside the
    declared bounds.
    """
    return _example(schema, schema, 0)


def _example(schema: Any, root: Any, depth: int) -> Any:
    if not isinstance(schema, dict):
        return "mock"
    if depth > 4 * MAX_DEPTH:  # a cycle of $refs that never reaches an object or array
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _example(_resolve(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if not _is_null(o)), options[0])
            return _example(chosen, root, depth + 1)
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts:
        values = [_example(part, root, depth + 1) for part in parts]
        if all(isinstance(v, dict) for v in values):
            merged: dict[str, Any] = {}
            for value in values:
                merged.update(value)
            return merged
        return values[0]

    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"

    if kind == "object":
        value: dict[str, Any] = {}
        if depth >= MAX_DEPTH:  # recursive schemas end in {}
            return value
        properties = schema.get("properties")
        if isinstance(properties, dict):
            for name, sub in properties.items():
                value[name] = _example(sub, root, depth + 1)
        for name in schema.get("required") or ():
            value.setdefault(name, "mock")
        return value
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return _number(schema, integer=True)
    if kind == "number":
        return _number(schema, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "mock"


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _resolve(ref: str, root: Any) -> Any:
    """Follow a local JSON pointer (``#/$defs/Name``); anything else resolves to nothing."""
    if not ref.startswith("#"):
        return None
    node = root
    for raw in ref[1:].split("/"):
        if not raw:
            continue
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _array(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems")
    items = schema.get("items")
    if isinstance(prefix, list):
        values = [_example(sub, root, depth + 1) for sub in prefix]
    elif isinstance(items, list):  # draft 4-7 tuple form
        values = [_example(sub, root, depth + 1) for sub in items]
    else:
        values = [] if depth >= MAX_DEPTH else [_example(items if items is not None else {}, root, depth + 1)]
    minimum = _as_int(schema.get("minItems"), 0)
    maximum = _as_int(schema.get("maxItems"), None)
    while values and len(values) < minimum:
        values.append(values[-1])
    if maximum is not None:
        values = values[:maximum]
    return values


def _string(schema: dict[str, Any]) -> str:
    value = _FORMATS.get(schema.get("format", ""), "mock")
    min_length = _as_int(schema.get("minLength"), 0) or 0
    max_length = _as_int(schema.get("maxLength"), None)
    if len(value) < min_length:
        value = (value * (min_length // len(value) + 1))[:min_length]
    if max_length is not None:
        value = value[:max_length]
    return value


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 1
    low = schema.get("minimum")
    high = schema.get("maximum")
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if _is_number(low) and value < low:
        value = low
    if _is_number(exclusive_low) and value <= exclusive_low:
        value = exclusive_low + step
    if _is_number(high) and value > high:
        value = high
    if _is_number(exclusive_high) and value >= exclusive_high:
        value = exclusive_high - step
    if float(value).is_integer():
        return int(value)
    if not integer:
        return value
    up = math.ceil(value)
    too_high = (_is_number(high) and up > high) or (_is_number(exclusive_high) and up >= exclusive_high)
    return math.floor(value) if too_high else up


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
