"""The security suite's shared fixtures: a real gateway, over loopback HTTP, on a real SQLite file.

Every test here talks to a :class:`~sira_kernel.testing.ServerThread` (uvicorn in a thread, both
listeners) running the bundled plugins as an operator would: ``api-openai``, ``api-anthropic``,
``provider-mock``, ``pricing``, ``storage-sqlite`` on a file under ``tmp_path``, ``auth-keys``,
``ledger`` and ``router``, with a master key. Nothing is mocked between the client and SQLite.

Tests cannot import this module (pytest runs with ``--import-mode=importlib``), so everything is
handed out through fixtures:

* ``gateway`` (module): one shared :class:`Gateway` per test module; tests that change what others
  see make their own tenants and keys.
* ``start_gateway`` (function): a factory for a gateway of one's own (other limits, another plugin,
  logging configured first); each is stopped at the end of the test.
* ``sec``: the suite's constants and helpers (:class:`Sec`).

A :class:`Gateway` knows its routes (read from the running kernel's snapshot, plus the kernel's own
health and admin routes), fills their path parameters, calls either listener, creates tenants and
keys through the admin API, and dumps every SQLite table so a test can prove nothing changed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sira_kernel.admin import admin_routes
from sira_kernel.testing import ServerThread, make_kernel

MASTER = "sk-sec-master-Qm7Vx2Lp9Rt4Wz8K"
"""The gateway's master key (holds the admin role)."""
HASH_SECRET = "sec-suite-hash-secret-5f1c9a3e7b"
MODELS = ("mock-1", "mock-large")
PRICES = {  # USD per million tokens: mock-1 costs 0.001 USD a prompt token, 0.002 a completion token
    "mock-1": {"input": 1000.0, "output": 2000.0},
    "mock-large": {"input": 5000.0, "output": 10000.0},
}
PLUGINS = (
    "api-openai", "api-anthropic", "provider-mock", "pricing", "storage-sqlite", "auth-keys", "ledger", "router",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
QUICK = 1.0
"""Seconds an answer to a hostile request must arrive within (a safety bound, not a benchmark)."""
APPEND_ONLY = frozenset({"audit_log", "usage_records"})
"""Tables every request may append to (the audit log and the usage ledger), never change."""

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@dataclass(frozen=True)
class RouteInfo:
    """One route as the running kernel serves it."""

    path: str
    methods: tuple[str, ...]
    owner: str
    listener: str

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.path)

    def fill(self, values: Mapping[str, str] | None = None, default: str = "x") -> str:
        values = values or {}
        return _PARAM.sub(lambda m: values.get(m.group(1), default), self.path)


def base_config(tmp: Path, *, plugins: Sequence[str] = PLUGINS, limits: Mapping[str, Any] | None = None,
                sections: Mapping[str, Mapping[str, Any]] | None = None, master: str = MASTER) -> dict[str, Any]:
    """kernel.toml (as a dict) for a security-suite gateway whose files live under ``tmp``."""
    plugin_sections: dict[str, dict[str, Any]] = {
        "storage-sqlite": {"path": str(tmp / "sira.db")},
        "auth-keys": {"hash_secret": HASH_SECRET, "estimate_completion_tokens": 16, "poll_interval": 0.1},
        "provider-mock": {"models": list(MODELS), "embedding_models": ["mock-embed"]},
        "pricing": {"bundled": False, "prices": PRICES},
        "ledger": {"flush_interval": 0.05},
        "router": {},
    }
    for name, section in (sections or {}).items():
        plugin_sections[name] = {**plugin_sections.get(name, {}), **section}
    return {
        "kernel": {"plugins": list(plugins), "data_dir": str(tmp / "data"), "drain_timeout": 2.0,
                   "stop_timeout": 2.0},
        "server": {"master_key": master},
        "limits": {"max_body_bytes": 256 * 1024, "max_tokens": 4096, "first_token_timeout": 3.0,
                   "total_timeout": 8.0, "connect_timeout": 2.0, "auth_timeout": 1.0, "body_timeout": 2.0,
                   **(limits or {})},
        "plugins": plugin_sections,
    }


class Gateway:
    """A running gateway and what a test needs to poke at it."""

    def __init__(self, server: ServerThread, db: Path) -> None:
        self.server = server
        self.db = db
        self.public = httpx.Client(base_url=server.base_url, timeout=15)
        self.admin_client = httpx.Client(base_url=server.admin_url, timeout=15)
        self._names = 0

    def close(self) -> None:
        self.public.close()
        self.admin_client.close()

    # -- addresses and routes ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def admin_url(self) -> str:
        return self.server.admin_url

    def port(self, listener: str) -> int:
        return self.server.port if listener == "public" else self.server.admin_port

    def routes(self, listener: str) -> list[RouteInfo]:
        """Every HTTP route of ``listener``: the plugins' (from the running kernel's snapshot) and the
        kernel's own (health on the public listener, the admin API on the admin listener)."""
        kernel = self.server.kernel
        found: list[RouteInfo] = []
        if listener == "public":
            found += [RouteInfo(p, ("GET",), "kernel", "public") for p in ("/health", "/health/live", "/health/ready")]
        else:
            for route in admin_routes(kernel):
                methods = tuple(sorted((route.methods or set()) - {"HEAD"}))
                found.append(RouteInfo(route.path, methods, "kernel", "admin"))
        for spec in kernel.snapshot.routes:
            if spec.listener == listener and not spec.websocket:
                found.append(RouteInfo(spec.path, tuple(spec.methods or METHODS), spec.owner, listener))
        return found

    # -- calls ---------------------------------------------------------------------------------------

    def client(self, listener: str) -> httpx.Client:
        return self.public if listener == "public" else self.admin_client

    def call(self, listener: str, method: str, path: str, key: str | None = MASTER, *,
             headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        sent = {"authorization": f"Bearer {key}"} if key is not None else {}
        sent.update(headers or {})
        return self.client(listener).request(method, path, headers=sent, **kwargs)

    def admin(self, method: str, path: str, key: str | None = MASTER, **kwargs: Any) -> httpx.Response:
        """A call to the admin listener (``path`` in full: ``/api/v1/keys``)."""
        return self.call("admin", method, path, key, **kwargs)

    def ok(self, method: str, path: str, key: str | None = MASTER, status: int = 200, **kwargs: Any) -> Any:
        response = self.admin(method, path, key, **kwargs)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def chat(self, key: str | None, content: str = "hello", model: str = "mock-1", path: str = "/v1/chat/completions",
             **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        return self.call("public", "POST", path, key, json=body)

    # -- tenants and keys ----------------------------------------------------------------------------

    def unique(self, stem: str) -> str:
        self._names += 1
        return f"{stem}-{self._names}-{time.monotonic_ns() % 1_000_000}"

    def tenant(self, stem: str = "tenant", **limits: Any) -> str:
        return str(self.ok("POST", "/api/v1/tenants", json={"name": self.unique(stem), "limits": limits},
                           status=201)["id"])

    def team(self, tenant_id: str, stem: str = "team", key: str = MASTER, **limits: Any) -> str:
        body = {"tenant_id": tenant_id, "name": self.unique(stem), "limits": limits}
        return str(self.ok("POST", "/api/v1/teams", key, json=body, status=201)["id"])

    def user(self, tenant_id: str, role: str = "member", key: str = MASTER) -> str:
        body = {"tenant_id": tenant_id, "email": f"{self.unique('u')}@example.com", "role": role}
        return str(self.ok("POST", "/api/v1/users", key, json=body, status=201)["id"])

    def key(self, tenant_id: str | None, role: str = "member", creator: str = MASTER,
            **body: Any) -> tuple[str, dict[str, Any]]:
        """A new virtual key: (the key, its record)."""
        body = {"name": self.unique(role), "role": role, **body}
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        created = self.ok("POST", "/api/v1/keys", creator, json=body, status=201)
        return created["key"], created["record"]

    # -- the database --------------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table (and the schema itself), sorted: equal dumps, equal databases."""
        with contextlib.closing(self.connect()) as connection:
            schema = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
            tables = [row[1] for row in schema if row[0] == "table"]
            out: dict[str, list[tuple[Any, ...]]] = {"sqlite_master": sorted(schema, key=repr)}
            for table in tables:
                out[table] = sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
        return out

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.connect()) as connection:
            return connection.execute(sql, params).fetchall()

    def wait_usage(self, request_ids: Sequence[str], timeout: float = 5.0) -> list[tuple[Any, ...]]:
        """The stored usage rows (request_id, principal, status, total_tokens, cost_usd) of these
        requests, once the ledger has written every one of them."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        while True:
            marks = ",".join("?" * len(wanted))
            found = self.rows(
                "SELECT request_id, principal, status, total_tokens, cost_usd FROM usage_records"
                f" WHERE request_id IN ({marks})", *wanted,
            ) if wanted else []
            if len(found) == len(wanted):
                return found
            assert time.monotonic() < deadline, f"the ledger stored {len(found)} of {len(wanted)} records"
            time.sleep(0.05)


def assert_unchanged(before: Mapping[str, list[tuple[Any, ...]]], after: Mapping[str, list[tuple[Any, ...]]]) -> None:
    """No table (nor the schema) changed, except rows appended to the append-only logs."""
    assert after.keys() == before.keys(), "a table appeared or disappeared"
    for table, rows in before.items():
        if table in APPEND_ONLY:
            missing = set(rows) - set(after[table])
            assert not missing, f"rows of {table} changed or vanished: {sorted(missing, key=repr)[:3]}"
        else:
            assert after[table] == rows, f"table {table} changed"


def raw_request(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` as is over a fresh TCP connection; return everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                if _complete(out):
                    break
    return out


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def raw_status(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0 when there was none)."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else 0


def _serve(config: dict[str, Any], plugins: Mapping[str, Any] | None) -> tuple[ServerThread, Path]:
    local = dict(plugins or {})
    server = ServerThread(lambda: make_kernel(local, config))
    server.start()
    return server, Path(config["plugins"]["storage-sqlite"]["path"])


@contextlib.contextmanager
def serving(config: dict[str, Any], plugins: Mapping[str, Any] | None = None) -> Iterator[Gateway]:
    """A :class:`Gateway` on ``config`` (with ``plugins`` besides the installed ones) for the block."""
    server, db = _serve(config, plugins)
    running = Gateway(server, db)
    try:
        yield running
    finally:
        running.close()
        server.stop()


class Sec:
    """The suite's constants and helpers, as one fixture (tests cannot import conftest)."""

    MASTER = MASTER
    HASH_SECRET = HASH_SECRET
    MODELS = MODELS
    PRICES = PRICES
    PLUGINS = PLUGINS
    METHODS = METHODS
    QUICK = QUICK
    RouteInfo = RouteInfo
    Gateway = Gateway
    base_config = staticmethod(base_config)
    serving = staticmethod(serving)
    assert_unchanged = staticmethod(assert_unchanged)
    raw_request = staticmethod(raw_request)
    raw_status = staticmethod(raw_status)


@pytest.fixture(scope="session")
def sec() -> type[Sec]:
    return Sec


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # Per module, not per session: a gateway left running would hold its SQLite store's thread
    # into the plugins' own tests (storage-sqlite checks that none is left).
    tmp = tmp_path_factory.mktemp("security")
    with serving(base_config(tmp)) as running:
        yield running


StartGateway = Callable[..., Gateway]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """``start_gateway(plugins={id: class}, **base_config_kwargs)`` → a running :class:`Gateway`."""
    started: list[Gateway] = []

    def start(plugins: Mapping[str, Any] | None = None, config: dict[str, Any] | None = None,
              **kwargs: Any) -> Gateway:
        tmp = tmp_path / f"gw{len(started)}"
        tmp.mkdir()
        cfg = config if config is not None else base_config(tmp, **kwargs)
        server, db = _serve(cfg, plugins)
        running = Gateway(server, db)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            running.close()
            running.server.stop()
