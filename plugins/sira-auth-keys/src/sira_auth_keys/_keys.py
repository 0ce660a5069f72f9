"""The virtual key format, key generation and the keyed hash stored in place of a key.

A key is ``sk-sira-`` followed by 32 to 64 base62 characters (letters and digits), drawn from
:mod:`secrets`. The store never sees it: it keeps ``HMAC-SHA256(hash_secret, key)`` in hex and the
first characters for display. A stolen database therefore yields no usable key, and without the
secret a guessed key cannot be checked offline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string

__all__ = [
    "KEY_PREFIX",
    "LINEAGE",
    "MAX_KEY_CHARS",
    "MIN_KEY_CHARS",
    "KeyHasher",
    "display_prefix",
    "generate_key",
    "is_sira_key",
    "is_well_formed",
]

KEY_PREFIX = "sk-sira-"
LINEAGE = "sira:lineage"
"""Metadata entry a rotated key carries: the id of the first key of its line. The principal, its
rate limits, concurrency and budget use this id, so a rotation continues them instead of starting
afresh (clients cannot set ``sira:`` entries)."""
MIN_KEY_CHARS = 32
MAX_KEY_CHARS = 64
DISPLAY_CHARS = 4
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_LEN = len(KEY_PREFIX)


def generate_key(length: int = 40) -> str:
    """A new random key (``length`` base62 characters after the prefix)."""
    if not MIN_KEY_CHARS <= length <= MAX_KEY_CHARS:
        raise ValueError(f"key length must be between {MIN_KEY_CHARS} and {MAX_KEY_CHARS}")
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def is_sira_key(token: str) -> bool:
    """True when ``token`` claims to be one of ours (the prefix); other tokens are left to others."""
    return token.startswith(KEY_PREFIX)


def is_well_formed(token: str) -> bool:
    """Length and charset check, done before any lookup: 32–64 ASCII letters or digits after the prefix."""
    body = token[_PREFIX_LEN:]
    return MIN_KEY_CHARS <= len(body) <= MAX_KEY_CHARS and body.isascii() and body.isalnum()


def lineage(metadata: dict[str, object], key_id: str) -> str:
    """The principal id of a key: its line's first key id (itself unless it came from a rotation)."""
    found = metadata.get(LINEAGE)
    return found if isinstance(found, str) and found else key_id


def display_prefix(key: str) -> str:
    """What people see to recognise a key: ``sk-sira-`` and its first four characters."""
    return key[: _PREFIX_LEN + DISPLAY_CHARS]


class KeyHasher:
    """``HMAC-SHA256(secret, key)`` as hex. The keyed state is computed once and copied per call."""

    __slots__ = ("_base",)

    def __init__(self, secret: str) -> None:
        self._base = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def __call__(self, key: str) -> str:
        digest = self._base.copy()
        digest.update(key.encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return "KeyHasher(<secret>)"
