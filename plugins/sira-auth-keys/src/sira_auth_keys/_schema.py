"""Strict shapes of every admin API request body, and the 400 that names the field at fault.

Bodies are decoded with msgspec into the structs below: unknown fields, wrong types, strings that
do not match their pattern and numbers out of range are refused, and :func:`decode` turns
msgspec's message into an :class:`Invalid` whose ``param`` is the field's path (``limits.rpm``).
Values are never echoed back. A field left out of an update keeps its value (``UNSET``); ``null``
clears it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from sira_kernel.storage import BudgetPeriod, Role

from ._policy import RoutePatterns

__all__ = [
    "ID_PATTERN",
    "MAX_BODY_BYTES",
    "Invalid",
    "KeyCreate",
    "KeyUpdate",
    "LimitsIn",
    "Rotate",
    "TeamCreate",
    "TeamUpdate",
    "TenantCreate",
    "TenantUpdate",
    "UserCreate",
    "UserUpdate",
    "check_id",
    "decode",
]

T = TypeVar("T")
MAX_BODY_BYTES = 64 * 1024
MAX_METADATA_BYTES = 4096
ID_PATTERN = re.compile(r"^(?!sk-)[A-Za-z0-9_-]{1,64}\Z")
"""An object id. Never one starting with ``sk-``: that is an API key pasted where its id belongs,
and it must not be echoed in the error or stored in the audit log."""

# \Z, not $: "$" also matches before a trailing newline.
Id = Annotated[str, msgspec.Meta(pattern=r"^(?!sk-)[A-Za-z0-9_-]{1,64}\Z")]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:@+-]{0,127}\Z")]
Email = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+\Z")]
Model = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}\Z")]
RoutePattern = Annotated[str, msgspec.Meta(pattern=r"^/[A-Za-z0-9._~/-]{0,255}\*?\Z")]
Models = Annotated[list[Model], msgspec.Meta(max_length=256)]
Routes = Annotated[list[RoutePattern], msgspec.Meta(max_length=64)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]
Usd = Annotated[float, msgspec.Meta(ge=0, le=1_000_000_000)]
Timestamp = Annotated[float, msgspec.Meta(gt=0, le=32_503_680_000)]  # before year 3000
Duration = Annotated[float, msgspec.Meta(gt=0, le=10 * 365 * 86_400)]
Grace = Annotated[float, msgspec.Meta(ge=0, le=30 * 86_400)]
Metadata = Annotated[dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], Any],
                     msgspec.Meta(max_length=32)]


class Invalid(Exception):
    """A request body or parameter the admin API refuses (400); ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class LimitsIn(_Body):
    rpm: Count | None = None
    tpm: Count | None = None
    max_concurrent: Count | None = None
    budget_usd: Usd | None = None
    budget_period: BudgetPeriod = "monthly"


class KeyCreate(_Body):
    name: Name
    tenant_id: Id | None = None
    team_id: Id | None = None
    user_id: Id | None = None
    role: Role = "member"
    allowed_models: Models | None = None
    allowed_routes: Routes | None = None
    limits: LimitsIn = msgspec.field(default_factory=LimitsIn)
    metadata: Metadata = msgspec.field(default_factory=dict)
    expires_at: Timestamp | None = None
    expires_in: Duration | None = None
    """Seconds from now; an alternative to ``expires_at``."""


class KeyUpdate(_Body):
    name: Name | UnsetType = UNSET
    team_id: Id | None | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    allowed_models: Models | None | UnsetType = UNSET
    allowed_routes: Routes | None | UnsetType = UNSET
    limits: LimitsIn | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    expires_at: Timestamp | None | UnsetType = UNSET


class Rotate(_Body):
    grace_seconds: Grace | None = None


class TenantCreate(_Body):
    name: Name
    limits: LimitsIn = msgspec.field(default_factory=LimitsIn)
    metadata: Metadata = msgspec.field(default_factory=dict)
    disabled: bool = False


class TenantUpdate(_Body):
    name: Name | UnsetType = UNSET
    limits: LimitsIn | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET


class TeamCreate(_Body):
    name: Name
    tenant_id: Id | None = None
    limits: LimitsIn = msgspec.field(default_factory=LimitsIn)
    metadata: Metadata = msgspec.field(default_factory=dict)


class TeamUpdate(_Body):
    name: Name | UnsetType = UNSET
    limits: LimitsIn | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET


class UserCreate(_Body):
    email: Email
    tenant_id: Id | None = None
    team_id: Id | None = None
    role: Role = "member"
    disabled: bool = False


class UserUpdate(_Body):
    email: Email | UnsetType = UNSET
    team_id: Id | None | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET


_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")


def _explain(error: msgspec.ValidationError) -> Invalid:
    text = str(error)
    at = _AT.search(text)
    path = at.group(1) if at else ""
    message = text[: at.start()] if at else text
    for pattern, what in ((_UNKNOWN, "unknown field"), (_MISSING, "missing required field")):
        found = pattern.match(message)
        if found:
            field = f"{path}.{found.group(1)}" if path else found.group(1)
            return Invalid(f"{field}: {what}", field)
    path = re.sub(r"\[\d+\]$", "", path) or path  # name the list, not the element
    field = path or None
    return Invalid(f"{field}: {message.rstrip('.')}" if field else message, field)


def _check_metadata(metadata: dict[str, Any], field: str = "metadata") -> None:
    if any(key.startswith("sira:") for key in metadata):
        raise Invalid(f"{field}: keys starting with 'sira:' are reserved", field)
    if len(msgspec.json.encode(metadata)) > MAX_METADATA_BYTES:
        raise Invalid(f"{field}: at most {MAX_METADATA_BYTES} bytes of JSON", field)


def _check_lists(models: Any, routes: Any) -> None:
    if isinstance(models, list) and len(set(models)) != len(models):
        raise Invalid("allowed_models: duplicate model names", "allowed_models")
    if isinstance(routes, list):
        if len(set(routes)) != len(routes):
            raise Invalid("allowed_routes: duplicate routes", "allowed_routes")
        for route in routes:
            if RoutePatterns.ambiguous(route.rstrip("*")):
                raise Invalid("allowed_routes: no '.', '..' or empty path segments", "allowed_routes")


def decode(body: bytes, struct: type[T]) -> T:
    """Decode and validate a JSON body (an empty body is an empty object)."""
    if len(body) > MAX_BODY_BYTES:
        raise Invalid(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        value = msgspec.json.decode(body or b"{}", type=struct)
    except msgspec.ValidationError as exc:
        raise _explain(exc) from None
    except msgspec.DecodeError:
        raise Invalid("the body is not valid JSON") from None
    except RecursionError:  # a JSON bomb ([[[[…]]]])
        raise Invalid("the body is nested too deeply") from None
    metadata = getattr(value, "metadata", UNSET)
    if isinstance(metadata, dict):
        _check_metadata(metadata)
    _check_lists(getattr(value, "allowed_models", None), getattr(value, "allowed_routes", None))
    return value


def check_id(value: str | None, field: str) -> str:
    """A path or query parameter that must be an id."""
    if value is not None and value.startswith("sk-"):
        raise Invalid(f"{field}: that is an API key, not an id: never send a key in a URL or a field", field)
    if value is None or not ID_PATTERN.match(value):
        raise Invalid(f"{field}: expected an id (1-64 letters, digits, '_' or '-')", field)
    return value
