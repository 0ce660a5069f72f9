"""Deterministic embeddings: each input's vector is derived from a hash of the input alone."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

__all__ = ["embedding_inputs", "encode_base64", "input_tokens", "vector_for"]


def embedding_inputs(raw: Any) -> list[str | list[int]]:
    """Normalize OpenAI's ``input`` (a string, strings, one token array or token arrays) to a list."""
    if isinstance(raw, str):
        return [raw]
    if not raw:
        return []
    if isinstance(raw[0], int):
        return [list(raw)]
    return list(raw)


def input_tokens(item: str | list[int]) -> int:
    """The mock's token count for one input: words of a string, length of a token array."""
    return len(item.split()) if isinstance(item, str) else len(item)


def vector_for(item: str | list[int], dimensions: int) -> list[float]:
    """A unit-length vector of ``dimensions`` floats; equal inputs give equal vectors, on any machine."""
    if isinstance(item, str):
        data = b"s:" + item.encode("utf-8", "surrogatepass")
    else:
        data = b"t:" + ",".join(map(str, item)).encode("ascii")
    raw = hashlib.shake_256(data).digest(4 * dimensions)
    values = [word / 2147483648.0 - 1.0 for word in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def encode_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format="base64"``: little-endian float32 values, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
