"""Host-header and request-target tricks never reach a protected route unauthenticated.

Sent as raw bytes over a socket (an HTTP client would normalize them away): odd ``Host`` headers,
absolute-form targets, targets without a leading ``/``, doubled slashes, ``.``/``..`` segments,
percent-encoded slashes and letters, ``;`` parameters, case changes, trailing slashes and the
``X-Forwarded-*`` family. Authorization of a key's ``allowed_routes`` (and of a delegated tenant
administrator) is decided on the raw ASGI path, so an encoding the router would decode to an
allowed route is refused rather than let through. And nothing is redirected to a host a client
named.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

OK_STATUSES = {400, 401, 403, 404, 405, 431}

PROTECTED = {
    "public": [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/v1/messages")],
    "admin": [("GET", "/api/v1/plugins"), ("GET", "/api/v1/keys"), ("POST", "/api/v1/plugins/provider-mock/unload")],
}


def variants(path: str, admin_port: int) -> list[str]:
    """Request targets that name ``path`` in some other way."""
    first, _, rest = path.lstrip("/").partition("/")
    return [
        path,
        "/" + path,
        f"/{first}//{rest}",
        f"/{first.upper()}/{rest}",
        path + "/",
        path + "/.",
        path + ";",
        path + ";jsessionid=1",
        f"/{first}/./{rest}",
        f"/{first}/x/../{rest}",
        f"/{first}/%2e%2e/{first}/{rest}",
        f"/x/%2e%2e/{first}/{rest}",
        f"/x/..%2f{first}/{rest}",
        f"/{first}%2F{rest.replace('/', '%2F')}",
        f"/{first}/{rest.replace('/', '%2f')}",
        "/" + "".join(f"%{ord(c):02x}" for c in first) + "/" + rest,
        f"%2F{first}/{rest}",
        path.lstrip("/"),
        f"http://evil.com{path}",
        f"http://127.0.0.1:{admin_port}{path}",
        f"//evil.com{path}",
        "*",
        path + "%00",
        path + "%20",
        path.replace("/", "\\"),
        f"{path}?x=/health",
        f"/health/../{path.lstrip('/')}",
        f"/health/..%2f{path.lstrip('/')}",
    ]


HOSTS = ["x", "x/?", "x#", "evil.com", "evil.com:443", "localhost", "127.0.0.1:{admin}", "", None]

FORWARDED = [
    {"X-Forwarded-For": "127.0.0.1"},
    {"X-Forwarded-Host": "127.0.0.1:{admin}"},
    {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "{admin}"},
    {"X-Original-URL": "/health"},
    {"X-Rewrite-URL": "/health"},
    {"X-Forwarded-Prefix": "/health"},
    {"X-HTTP-Method-Override": "GET"},
    {"Forwarded": "for=127.0.0.1;host=127.0.0.1:{admin};proto=https"},
    {"X-Real-IP": "127.0.0.1", "X-Client-IP": "127.0.0.1"},
]


def request(method: str, target: str, host: str | None, headers: dict[str, str], body: bytes = b"{}") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    if host is not None:
        lines.append(b"Host: " + host.encode("latin-1"))
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    lines += [b"Content-Type: application/json", f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def location_of(answer: bytes) -> str | None:
    match = re.search(rb"(?im)^location:\s*(\S+)", answer.partition(b"\r\n\r\n")[0])
    return match.group(1).decode("latin-1") if match else None


@pytest.mark.parametrize("listener", ["public", "admin"])
def test_odd_targets_and_hosts_never_reach_a_protected_route_unauthenticated(gateway: Any, sec: Any,
                                                                              listener: str) -> None:
    admin = str(gateway.server.admin_port)
    port = gateway.port(listener)
    wrong = []
    sent = 0
    for method, path in PROTECTED[listener]:
        for target in variants(path, gateway.server.admin_port):
            for host in HOSTS:
                host = host.format(admin=admin) if host is not None else None
                answer = sec.raw_request(port, request(method, target, host, {}))
                sent += 1
                status = sec.raw_status(answer)
                if status not in OK_STATUSES or location_of(answer) is not None:
                    wrong.append((method, target, host, status, location_of(answer)))
            for extra in FORWARDED:
                headers = {k: v.format(admin=admin) for k, v in extra.items()}
                answer = sec.raw_request(port, request(method, target, "x", headers))
                sent += 1
                status = sec.raw_status(answer)
                if status not in OK_STATUSES or location_of(answer) is not None:
                    wrong.append((method, target, headers, status, location_of(answer)))
    assert sent > 1000
    assert not wrong, wrong[:10]


def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(gateway: Any, sec: Any) -> None:
    # Starlette's slash redirect builds its Location from the Host header: Host: evil.com answered
    # 307 Location: http://evil.com/v1/chat/completions (cache poisoning, credential-forwarding
    # clients). Paths are served as registered, or they are a 404.
    for listener, target in (("public", "/v1/chat/completions/"), ("public", "/v1/models/"),
                             ("admin", "/api/v1/plugins/"), ("admin", "/api/v1/keys/")):
        for key in (None, sec.MASTER):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            answer = sec.raw_request(gateway.port(listener), request("GET", target, "evil.com", headers))
            assert sec.raw_status(answer) in (401, 404, 405), (listener, target, answer[:200])
            assert location_of(answer) is None, answer[:300]
            assert b"evil.com" not in answer


def test_the_public_port_never_serves_the_admin_app_whatever_the_request_says(gateway: Any, sec: Any) -> None:
    admin = gateway.server.admin_port
    auth = {"Authorization": f"Bearer {sec.MASTER}"}
    for target in ("/api/v1/plugins", f"http://127.0.0.1:{admin}/api/v1/plugins", "/api/v1/keys",
                   "/api/v1/reports/summary", "/api/v1/rules"):
        for host, extra in ((f"127.0.0.1:{admin}", {}), ("x", {"X-Forwarded-Port": str(admin)}),
                            ("x", {"X-Forwarded-Host": f"127.0.0.1:{admin}"}),
                            ("x", {"Forwarded": f"host=127.0.0.1:{admin}"})):
            answer = sec.raw_request(gateway.server.port, request("GET", target, host, auth | extra))
            assert sec.raw_status(answer) in (404, 405), (target, host, extra, answer[:200])


@pytest.fixture(scope="module")
def scoped(gateway: Any) -> dict[str, Any]:
    tenant = gateway.tenant("scoped")
    chat_only, _ = gateway.key(tenant, allowed_routes=["/v1/chat/completions"])
    models_only, _ = gateway.key(tenant, allowed_routes=["/v1/models"])
    v1_only, _ = gateway.key(tenant, allowed_routes=["/v1/*"])
    delegate, _ = gateway.key(tenant, role="tenant-admin")
    return {"tenant": tenant, "chat_only": chat_only, "models_only": models_only, "v1_only": v1_only,
            "delegate": delegate}


CHAT = b'{"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "input": "hi"}'  # chat or embeddings


def call(gateway: Any, sec: Any, listener: str, method: str, target: str, key: str, body: bytes = b"") -> int:
    answer = sec.raw_request(gateway.port(listener),
                             request(method, target, "x", {"Authorization": f"Bearer {key}"}, body))
    return int(sec.raw_status(answer))


def test_allowed_routes_are_matched_on_the_raw_path(gateway: Any, sec: Any, scoped: Any) -> None:
    chat_only, models_only, v1_only = scoped["chat_only"], scoped["models_only"], scoped["v1_only"]
    assert call(gateway, sec, "public", "POST", "/v1/chat/completions", chat_only, CHAT) == 200
    assert call(gateway, sec, "public", "GET", "/v1/models", models_only) == 200
    assert call(gateway, sec, "public", "GET", "/api/v1/models", v1_only) == 403
    for target in ("/v1/%63hat/completions", "/v1/chat%2Fcompletions", "/%76%31/chat/completions",
                   "/v1/./chat/completions", "/v1/x/../chat/completions", "//v1/chat/completions",
                   "/v1//chat/completions", "/v1/chat/completions/", "/V1/chat/completions",
                   "/api/v1/chat/completions", "/v1/embeddings", "/v1/chat/completions;x",
                   "/v1/chat/completions%00"):
        # whatever the router would make of it, it is not the raw path the key may call
        assert call(gateway, sec, "public", "POST", target, chat_only, CHAT) in (403, 404, 405), target
    for target in ("/v1/%6dodels", "/v1/models/../chat/completions", "/v1/models/%2e%2e/chat/completions",
                   "/v1/models/..%2fchat%2fcompletions", "/v1/models/mock-1", "/v1/models/"):
        status = call(gateway, sec, "public", "GET", target, models_only)
        assert status in (403, 404), (target, status)
        status = call(gateway, sec, "public", "POST", target, models_only, CHAT)
        assert status in (403, 404, 405), (target, status)
    for target in ("/v1/models/..%2f..%2fapi%2fv1%2fmodels", "/v1/../api/v1/models", "/v1/%2e%2e/api/v1/models"):
        assert call(gateway, sec, "public", "GET", target, v1_only) in (403, 404), target


def test_a_delegated_admin_reaches_its_plugins_routes_only_by_their_raw_path(gateway: Any, sec: Any,
                                                                             scoped: Any) -> None:
    delegate = scoped["delegate"]
    assert call(gateway, sec, "admin", "GET", "/api/v1/keys", delegate) == 200
    for target in ("/api/v1/plugins", "/api/v1/keys/../plugins", "/api/v1/keys/%2e%2e/plugins",
                   "/api/v1/keys/..%2fplugins", "/api/v1/%6beys", "/api/v1/keys%2F", "//api/v1/keys",
                   "/api/v1//keys", "/api/v1/keys/", "/API/v1/keys", "/api/v1/keys;", "/api/v1/health",
                   "/api/v1/bus", "/api/v1/reports/summary", "/api/v1/rules", "/api/v1/ledger",
                   "/api/v1/keys/../reports/summary", "/api/v1/keys/..;/plugins"):
        status = call(gateway, sec, "admin", "GET", target, delegate)
        assert status in (403, 404), (target, status)
    for target in ("/api/v1/plugins/provider-mock/unload", "/api/v1/keys/x/../../plugins/provider-mock/unload",
                   "/api/v1/keys/%2e%2e/plugins/provider-mock/unload", "/api/v1/rules/test"):
        status = call(gateway, sec, "admin", "POST", target, delegate, b"{}")
        assert status in (403, 404), (target, status)
    assert "provider-mock" in gateway.ok("GET", "/api/v1/health")["providers"]
