"""JSON Schema (what OpenAI tools and response formats carry) to Gemini's ``Schema`` object.

Gemini's ``Schema`` is a subset of OpenAPI 3.0, and the API refuses any field it does not know with a
400 (``Unknown name "additionalProperties" ... Cannot find field``). So the schema is rebuilt from the
keywords Gemini understands instead of being forwarded:

- kept: ``type``, ``format`` (only ``enum``/``date-time`` for strings and ``float``/``double``/
  ``int32``/``int64`` for numbers; Gemini rejects the others), ``title``, ``description``,
  ``nullable``, ``enum`` (string values only), ``properties``, ``required`` (only names that are in
  ``properties``), ``items``, ``anyOf``, ``minItems``/``maxItems``, ``minProperties``/
  ``maxProperties``, ``minLength``/``maxLength``, ``pattern``, ``minimum``/``maximum``, ``default``,
  ``example``, ``propertyOrdering``;
- rewritten: ``"type": [T, "null"]`` becomes ``type T`` + ``nullable``; ``oneOf`` becomes ``anyOf``;
  an ``anyOf`` with a ``{"type": "null"}`` branch becomes ``nullable`` (and collapses when one branch
  is left); ``allOf`` is merged into one schema; ``const`` becomes a one-value ``enum``; local
  ``$ref`` (``#/$defs/X``, ``#/definitions/X``) is inlined;
- dropped: everything else (``$schema``, ``$id``, ``$defs``, ``additionalProperties``, ``strict``,
  ``exclusiveMinimum``, ``multipleOf``, ``uniqueItems``, ``examples``, ``not``…). An empty
  ``properties`` is left out too: Gemini refuses an object schema whose ``properties`` is empty.

Recursive schemas cannot be inlined and are refused (:class:`SchemaError`), as are remote ``$ref``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaError", "to_gemini_schema"]

_PLAIN = (
    "title",
    "description",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "example",
)
_FORMATS = {
    "string": frozenset({"enum", "date-time"}),
    "number": frozenset({"float", "double"}),
    "integer": frozenset({"int32", "int64"}),
}
MAX_DEPTH = 40


class SchemaError(ValueError):
    """A JSON schema Gemini's ``Schema`` cannot express."""


def to_gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` rewritten for Gemini (see the module docstring for what changes)."""
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = schema.get(key)
        if isinstance(found, Mapping):
            defs.update(found)
    return _convert(schema, defs, 0, ())


def is_empty_object(schema: Mapping[str, Any]) -> bool:
    """True for an object schema with no properties (Gemini wants no ``parameters`` at all then)."""
    return str(schema.get("type", "object")).lower() == "object" and not schema.get("properties")


def _convert(schema: Any, defs: Mapping[str, Any], depth: int, resolving: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        return {}  # ``true`` / ``{}``: anything goes, which Gemini spells as no constraint at all
    if depth > MAX_DEPTH:
        raise SchemaError(f"the schema nests deeper than {MAX_DEPTH} levels")
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _convert(_resolve(ref, schema, defs, resolving), defs, depth + 1, (*resolving, ref))
    if "allOf" in schema and isinstance(schema["allOf"], list):
        return _convert(_merge_all_of(schema, defs, resolving), defs, depth + 1, resolving)

    out: dict[str, Any] = {}
    nullable = schema.get("nullable") is True
    kind = schema.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        nullable = nullable or len(types) < len(kind)
        if len(types) > 1:
            out["anyOf"] = [{"type": t} for t in types]
        kind = types[0] if len(types) == 1 else None
    if isinstance(kind, str) and kind != "null":
        out["type"] = kind
    elif kind == "null":
        nullable = True

    branches = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(branches, list):
        kept = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
        nullable = nullable or len(kept) < len(branches)
        converted = [_convert(b, defs, depth + 1, resolving) for b in kept]
        if len(converted) == 1:
            out = {**converted[0], **out}  # the outer keywords (description…) win
        elif converted:
            out["anyOf"] = converted

    for key in _PLAIN:
        if key in schema:
            out[key] = schema[key]
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(str(out.get("type", "")).lower(), ()):
        out["format"] = fmt
    enum = schema.get("enum")
    if "const" in schema and enum is None:
        enum = [schema["const"]]
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        out["enum"] = enum
        out.setdefault("type", "string")

    properties = schema.get("properties")
    if isinstance(properties, Mapping) and properties:
        out["properties"] = {
            str(name): _convert(sub, defs, depth + 1, resolving) for name, sub in properties.items()
        }
        required = [name for name in schema.get("required") or () if name in properties]
        if required:
            out["required"] = required
        ordering = schema.get("propertyOrdering")
        if isinstance(ordering, list) and all(name in properties for name in ordering):
            out["propertyOrdering"] = ordering
    items = schema.get("items")
    if isinstance(items, Mapping):
        out["items"] = _convert(items, defs, depth + 1, resolving)
    if nullable:
        out["nullable"] = True
    return out


def _resolve(ref: str, schema: Mapping[str, Any], defs: Mapping[str, Any], resolving: tuple[str, ...]) -> Any:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            name = ref[len(prefix) :]
            break
    else:
        raise SchemaError(f"$ref {ref[:100]!r} is not a local definition (#/$defs/… or #/definitions/…)")
    if name not in defs:
        raise SchemaError(f"$ref {ref[:100]!r} names no definition")
    if ref in resolving:
        raise SchemaError(f"the schema is recursive through {ref[:100]!r}, which Gemini cannot express")
    siblings = {k: v for k, v in schema.items() if k != "$ref"}
    target = defs[name]
    return {**target, **siblings} if isinstance(target, Mapping) else siblings


def _merge_all_of(
    schema: Mapping[str, Any], defs: Mapping[str, Any], resolving: tuple[str, ...]
) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if isinstance(part, Mapping) and isinstance(part.get("$ref"), str):
            part = _resolve(part["$ref"], part, defs, resolving)
        if not isinstance(part, Mapping):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, Mapping):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged
