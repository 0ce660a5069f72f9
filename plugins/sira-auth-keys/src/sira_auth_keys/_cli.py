"""``sira keys create|list|revoke|rotate``: the admin API of ``auth-keys`` from a shell.

Added to the ``sira`` command through the ``sira_kernel.cli`` entry-point group. Each command
talks to the running gateway's admin listener with :func:`sira_kernel.cli.admin_client` (the key
from ``$SIRA_ADMIN_KEY`` or ``server.master_key``); ``--admin-port`` reaches a gateway started with
``sira serve --admin-port``. ``create`` and ``rotate`` print the new key alone on stdout (it is
shown once) and what was created on stderr, so ``KEY=$(sira keys create --name ci)`` works.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import httpx

from sira_kernel.cli import CLIError, admin_client

__all__ = ["add_commands"]

PREFIX = "/api/v1"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def _client(args: argparse.Namespace) -> httpx.Client:
    client: httpx.Client = admin_client(args)
    if args.admin_port is not None:
        url = client.base_url
        client.base_url = httpx.URL(scheme=url.scheme, host=url.host, port=args.admin_port)
    return client


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          params: dict[str, str] | None = None) -> Any:
    with _client(args) as client:
        try:
            response = client.request(method, f"{args.prefix}{path}", json=body, params=params)
        except httpx.HTTPError as exc:
            raise CLIError(f"cannot reach the admin API at {client.base_url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = error["message"]
        except Exception:
            message = response.text[:200]
        raise CLIError(f"{response.status_code}: {message}")
    return response.json() if response.content else None


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, sort_keys=True))


def _describe(record: dict[str, Any]) -> str:
    team = f" team={record['team_id']}" if record.get("team_id") else ""
    expires = f" expires_at={record['expires_at']:.0f}" if record.get("expires_at") else ""
    return (f"{record['id']}  {record['prefix']}…  {record['name']!r}  {record['role']}  tenant={record['tenant_id']}"
            f"{team}  {record['status']}{expires}")


def cmd_create(args: argparse.Namespace) -> int:
    limits = {k: v for k, v in {
        "rpm": args.rpm, "tpm": args.tpm, "max_concurrent": args.max_concurrent, "budget_usd": args.budget,
        "budget_period": args.budget_period,
    }.items() if v is not None}
    body: dict[str, Any] = {"name": args.name, "role": args.role, "limits": limits}
    for field, value in (("tenant_id", args.tenant), ("team_id", args.team), ("user_id", args.user),
                         ("allowed_models", _split(args.models)), ("allowed_routes", _split(args.routes)),
                         ("expires_in", args.expires_in)):
        if value is not None:
            body[field] = value
    created = _call(args, "POST", "/keys", body)
    if args.json:
        _print_json(created)
        return 0
    print(created["key"])
    print(f"created {_describe(created['record'])}", file=sys.stderr)
    print("the key is shown once: store it now", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("tenant_id", args.tenant), ("team_id", args.team)) if v is not None}
    listed = _call(args, "GET", "/keys", params=params)
    if args.json:
        _print_json(listed)
        return 0
    for record in listed["keys"]:
        print(_describe(record))
    return 0


def _key_id(value: str) -> str:
    if value.startswith("sk-"):  # a key pasted for its id: it must not travel in a URL (nor be echoed)
        raise argparse.ArgumentTypeError("that is an API key, not a key id: use the id 'sira keys list' shows")
    if not _ID.match(value):
        raise argparse.ArgumentTypeError("a key id is 1-64 letters, digits, '_' or '-'")
    return value


def cmd_revoke(args: argparse.Namespace) -> int:
    revoked = _call(args, "POST", f"/keys/{args.key_id}/revoke")
    if args.json:
        _print_json(revoked)
    else:
        print(f"revoked {_describe(revoked)}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    body = {} if args.grace is None else {"grace_seconds": args.grace}
    rotated = _call(args, "POST", f"/keys/{args.key_id}/rotate", body)
    if args.json:
        _print_json(rotated)
        return 0
    print(rotated["key"])
    print(f"created {_describe(rotated['record'])}", file=sys.stderr)
    print(f"previous {_describe(rotated['previous'])}", file=sys.stderr)
    return 0


def add_commands(sub: Any, with_config: Any) -> None:
    """The ``sira_kernel.cli`` entry point: add ``sira keys …`` to the ``sira`` command."""
    keys = sub.add_parser("keys", help="virtual API keys (the auth-keys admin API)")
    commands = keys.add_subparsers(dest="keys_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_config(parser)
        parser.add_argument("--admin-port", type=int, help="the admin listener's port (default: from the config)")
        parser.add_argument("--prefix", default=PREFIX, help=f"the admin API prefix (default {PREFIX})")
        parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
        return parser

    create = common(commands.add_parser("create", help="create a key (printed once)"))
    create.add_argument("--name", required=True)
    create.add_argument("--tenant", help="tenant id (default: your key's tenant)")
    create.add_argument("--team", help="team id")
    create.add_argument("--user", help="user id")
    create.add_argument("--role", default="member", choices=["admin", "tenant-admin", "member", "viewer"])
    create.add_argument("--models", help="allowed models, comma-separated (default: all)")
    create.add_argument("--routes", help="allowed routes, comma-separated; a trailing * is a prefix")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--max-concurrent", type=int, help="requests at once")
    create.add_argument("--budget", type=float, help="USD budget")
    create.add_argument("--budget-period", choices=["daily", "weekly", "monthly", "total"])
    create.add_argument("--expires-in", type=float, help="seconds until the key expires")
    create.set_defaults(func=cmd_create)

    listing = common(commands.add_parser("list", help="list keys"))
    listing.add_argument("--tenant", help="tenant id")
    listing.add_argument("--team", help="team id")
    listing.set_defaults(func=cmd_list)

    revoke = common(commands.add_parser("revoke", help="revoke a key (every worker refuses it within a second)"))
    revoke.add_argument("key_id", type=_key_id)
    revoke.set_defaults(func=cmd_revoke)

    rotate = common(commands.add_parser("rotate", help="replace a key; the old one works for a grace period"))
    rotate.add_argument("key_id", type=_key_id)
    rotate.add_argument("--grace", type=float, help="seconds the old key stays valid (default: the plugin's)")
    rotate.set_defaults(func=cmd_rotate)
