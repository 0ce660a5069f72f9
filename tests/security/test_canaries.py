"""Canary secrets: plant them, run a representative workload, then look for them everywhere.

Planted: the provider's API key (``provider-openai`` pointed at a fake OpenAI upstream that demands
it), the master key, a virtual key (and a second one, revoked) and a prompt. The workload: chats and
streams through both surfaces and the ``openai`` SDK, embeddings, token counting, client errors,
failing upstreams (errors that quote the provider key, resets, drops, timeouts), bad and near-miss
keys, a virtual key pasted where a key id belongs, and the admin API and reports. Logging is JSON at
debug level. Afterwards none of the secrets may appear in a log line, a response (error bodies, the
health report, admin answers, reports), a row of any SQLite table or a file under the data
directory. The prompt may appear in one place only: the model's own answer to the client. And no
client field or header (``base_url``, ``api_key``, ``extra_headers``, ``x-upstream-url``…) sends an
upstream call, or the provider key, anywhere but the configured upstream.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import structlog

from sira_kernel.logs import configure_logging
from sira_kernel.testing.fake_openai import FakeOpenAIUpstream, Fault

PROVIDER_CANARY = "sk-proj-CANARYprov7Hq2Lx9Wm4ZtB6"
MASTER_CANARY = "sk-CANARYmaster3Jk8Np5Qr1VyD0"
PROMPT_CANARY = "CANARY-prompt-Xq93Lf0pTz"


@contextlib.contextmanager
def debug_logs() -> Iterator[None]:
    """JSON logs at debug level, to the stderr of the moment (call it inside the test, where capfd
    has its final file: a logger configured during fixture setup would keep a file pytest closes)."""
    saved = structlog.get_config()
    configure_logging("json", "debug")
    try:
        yield
    finally:
        structlog.configure(**saved)


class Recorder:
    """Every answer the workload got, sorted by whether a canary may legitimately be in it."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str]] = []  # (what, headers + body)
        self.model_answers: list[str] = []  # a model's own reply: the prompt may be echoed there

    def add(self, what: str, response: httpx.Response, model_answer: bool = False) -> httpx.Response:
        text = "\n".join(f"{k}: {v}" for k, v in response.headers.items()) + "\n" + response.text
        if model_answer and response.status_code == 200:
            self.model_answers.append(text)
        else:
            self.answers.append((f"{what} -> {response.status_code}", text))
        return response


def chat_body(content: str, model: str = "mock-1", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def workload(gateway: Any, upstream: FakeOpenAIUpstream, seen: Recorder, admin_key: str,
             extra: dict[str, str]) -> dict[str, str]:
    public, admin_url = gateway.base_url, gateway.admin_url
    prompt = f"Please summarise {PROMPT_CANARY} for me"

    def admin(method: str, path: str, key: str = admin_key, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, admin_url + path, headers={"authorization": f"Bearer {key}"}, timeout=15,
                                 **kwargs)
        return seen.add(f"admin {method} {path}", response)

    # keys: the virtual canary is shown once, by design, in the answer that creates it
    tenant = admin("POST", "/api/v1/tenants", json={"name": "canary-tenant", "limits": {"budget_usd": 100}}).json()
    created = httpx.post(admin_url + "/api/v1/keys", headers={"authorization": f"Bearer {admin_key}"}, timeout=15,
                         json={"name": "canary", "tenant_id": tenant["id"], "limits": {"budget_usd": 50}})
    assert created.status_code == 201, created.text
    virtual, record = created.json()["key"], created.json()["record"]
    doomed = httpx.post(admin_url + "/api/v1/keys", headers={"authorization": f"Bearer {admin_key}"}, timeout=15,
                        json={"name": "doomed", "tenant_id": tenant["id"]}).json()
    revoked = doomed["key"]
    admin("POST", f"/api/v1/keys/{doomed['record']['id']}/revoke")

    # the OpenAI SDK, through the gateway, to the mock and to the (fake) upstream provider
    client = openai.OpenAI(base_url=f"{public}/v1", api_key=virtual, max_retries=0, timeout=15)
    with client:
        for model in ("mock-1", "gpt-4o-mini"):
            raw = client.chat.completions.with_raw_response.create(model=model,
                                                                   messages=[{"role": "user", "content": prompt}])
            seen.model_answers.append(raw.http_response.text)
            stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                    stream=True, stream_options={"include_usage": True})
            seen.model_answers.append("".join(chunk.model_dump_json() for chunk in stream))
        client.embeddings.create(model="mock-embed", input=prompt)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": prompt}])

    def api(what: str, path: str, key: str | None, body: Any = None, content: bytes | None = None,
            header: str = "authorization", model_answer: bool = False) -> httpx.Response:
        headers = {}
        if key is not None:
            headers[header] = f"Bearer {key}" if header == "authorization" else key
        response = httpx.post(public + path, headers=headers, json=body, content=content, timeout=15)
        return seen.add(what, response, model_answer)

    # no client field or header moves the upstream call (or its key) somewhere else
    evil = extra["evil"]
    redirects = {"base_url": evil, "api_base": evil, "url": evil, "endpoint": evil, "api_key": "sk-evil-0123456789",
                 "provider": "evil", "deployment": evil, "extra_headers": {"authorization": "Bearer sk-evil-0123"},
                 "extra_query": {"api-version": evil}, "extra_body": {"base_url": evil}, "headers": {"host": evil}}
    for model in ("gpt-4o-mini", "mock-1"):
        for field, value in redirects.items():
            response = httpx.post(public + "/v1/chat/completions", timeout=15, json=chat_body(prompt, model=model)
                                  | {field: value}, headers={"authorization": f"Bearer {virtual}",
                                                              "x-upstream-url": evil, "openai-base-url": evil,
                                                              "x-sira-provider": "evil", "x-forwarded-host": evil})
            seen.add(f"redirect {field}", response, model_answer=True)
            assert response.status_code in (200, 400), response.text

    # the Anthropic surface with x-api-key
    anthropic = {"model": "mock-1", "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]}
    api("anthropic", "/v1/messages", virtual, anthropic, header="x-api-key", model_answer=True)
    api("anthropic stream", "/v1/messages", virtual, anthropic | {"stream": True}, header="x-api-key",
        model_answer=True)
    api("count_tokens", "/v1/messages/count_tokens", virtual, anthropic, header="x-api-key")

    # client errors, each carrying the prompt
    api("bad json", "/v1/chat/completions", virtual, content=json.dumps(chat_body(prompt)).encode()[:-3])
    api("too big", "/v1/chat/completions", virtual, chat_body(prompt + "x" * 300_000))
    api("max_tokens", "/v1/chat/completions", virtual, chat_body(prompt, max_tokens=10**9))
    api("n", "/v1/chat/completions", virtual, chat_body(prompt, n=1000))
    api("bad type", "/v1/chat/completions", virtual, {"model": "mock-1", "messages": [{"role": "user",
                                                                                        "content": 5}], "x": prompt})
    api("mock error", "/v1/chat/completions", virtual, chat_body(f"{prompt} [mock:status=500]"))
    api("mock 429", "/v1/chat/completions", virtual, chat_body(f"{prompt} [mock:status=429]"))
    api("mock drop", "/v1/chat/completions", virtual, chat_body(f"{prompt} [mock:drop=2]", stream=True),
        model_answer=True)

    # failing upstreams: errors that quote the provider key, a reset, a drop mid-stream, a hang
    leaky = f"Incorrect API key provided: {PROVIDER_CANARY}. You can find your API key at ..."
    for fault in (Fault(status=401, message=leaky), Fault(status=500, message=leaky),
                  Fault(status=400, message=leaky), Fault(status=429, message=leaky, retry_after=1),
                  Fault(reset=True), Fault(status=503, body=leaky.encode(), content_type="text/plain")):
        upstream.enqueue(fault)
        api("upstream fault", "/v1/chat/completions", virtual, chat_body(prompt, model="gpt-4o-mini"))
    upstream.enqueue(Fault(drop_after=2))
    api("upstream drop", "/v1/chat/completions", virtual, chat_body(prompt, model="gpt-4o-mini", stream=True),
        model_answer=True)
    upstream.enqueue(Fault(hang=True))
    api("upstream hang", "/v1/chat/completions", virtual, chat_body(prompt, model="gpt-4o-mini"))

    # bad keys: wrong, near misses of every canary, revoked, wrong header, on both listeners
    for bad in (MASTER_CANARY + "x", MASTER_CANARY[:-1], virtual + "x", virtual[:-1] + "0", revoked,
                PROVIDER_CANARY, "sk-nope-0123456789"):
        for header in ("authorization", "x-api-key"):
            api("bad key", "/v1/chat/completions", bad, chat_body(prompt), header=header)
        admin("GET", "/api/v1/keys", key=bad)
    admin("GET", "/api/v1/plugins", key=virtual)  # a member key on the admin API

    # the admin API and reports, including the classic mistake: a key pasted where its id belongs
    for method, path in (
        ("GET", f"/api/v1/keys/{virtual}"), ("PUT", f"/api/v1/keys/{virtual}"), ("DELETE", f"/api/v1/keys/{virtual}"),
        ("POST", f"/api/v1/keys/{virtual}/rotate"), ("GET", f"/api/v1/budgets/key/{virtual}"),
        ("GET", f"/api/v1/keys?tenant_id={virtual}"), ("GET", f"/api/v1/audit?actor={virtual}"),
        ("GET", f"/api/v1/reports/detailed?key={virtual}"), ("POST", "/api/v1/keys"),
        ("GET", f"/api/v1/keys/{record['id']}"), ("GET", "/api/v1/keys"), ("GET", "/api/v1/tenants"),
        ("GET", "/api/v1/budgets"), ("GET", "/api/v1/audit"), ("GET", "/api/v1/reports/summary?group_by=key,model"),
        ("GET", "/api/v1/reports/detailed"), ("GET", "/api/v1/reports/detailed?format=csv"), ("GET", "/api/v1/ledger"),
        ("GET", "/api/v1/plugins"), ("GET", "/api/v1/health"), ("GET", "/api/v1/bus"), ("GET", "/api/v1/rules"),
        ("GET", "/api/v1/route/decision-log"), ("GET", "/api/v1/route/breakers"), ("GET", "/api/v1/route/groups"),
    ):
        admin(method, path, json={} if method in ("PUT", "POST") else None)
    for path, body in (("/api/v1/keys", {"name": "pasted", "tenant_id": virtual}),
                       ("/api/v1/teams", {"name": "pasted", "tenant_id": virtual}),
                       ("/api/v1/users", {"email": "p@example.com", "tenant_id": tenant["id"], "team_id": virtual})):
        admin("POST", path, json=body)
    for path in ("/health", "/health/ready", "/health/live"):
        seen.add(path, httpx.get(public + path, timeout=15))
    return {"virtual": virtual, "revoked": revoked, "key_id": record["id"]}


def settled(gateway: Any) -> int:
    """The number of stored usage rows, once the ledger has stopped writing."""
    previous = -1
    while True:
        count = gateway.rows("SELECT COUNT(*) FROM usage_records")[0][0]
        if count == previous:
            return int(count)
        previous = count
        time.sleep(0.3)


def test_no_canary_leaks_anywhere(start_gateway: Any, sec: Any, tmp_path: Path,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    with debug_logs(), FakeOpenAIUpstream(api_key=PROVIDER_CANARY) as upstream, FakeOpenAIUpstream() as evil:
        config = sec.base_config(
            tmp_path, plugins=(*sec.PLUGINS, "provider-openai"), master=MASTER_CANARY,
            limits={"first_token_timeout": 1.0, "total_timeout": 3.0},
            sections={"provider-openai": {"base_url": upstream.base_url, "api_key": PROVIDER_CANARY,
                                          "models": ["gpt-4o-mini"]},
                      "pricing": {"prices": {**sec.PRICES, "gpt-4o-mini": {"input": 150.0, "output": 600.0}}},
                      "router": {"retries": 0}},
        )
        gateway = start_gateway(config=config)
        seen = Recorder()
        keys = workload(gateway, upstream, seen, MASTER_CANARY, {"evil": evil.base_url})
        requests, evil_requests = list(upstream.requests), list(evil.requests)
        assert settled(gateway) >= 20  # the workload was metered
        db = json.dumps(gateway.dump(), default=repr)
        files = {str(p): p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*")
                 if p.is_file() and not p.name.startswith("sira.db")}
        gateway.server.stop()
    logs = capfd.readouterr()
    log_text = logs.out + logs.err
    assert '"event": "plugin.active"' in log_text and '"level": "info"' in log_text  # JSON logs were captured
    secrets = {"provider key": PROVIDER_CANARY, "master key": MASTER_CANARY, "virtual key": keys["virtual"],
               "revoked key": keys["revoked"]}
    everything = {"prompt": PROMPT_CANARY, **secrets}
    leaks = []
    for name, canary in everything.items():
        if canary in log_text:
            line = next(line for line in log_text.splitlines() if canary in line)
            leaks.append(f"{name} in a log line: {line[:300]}")
        for what, text in seen.answers:
            if canary in text:
                leaks.append(f"{name} in the answer to {what}: {text[-300:]}")
        if canary in db:
            at = db.index(canary)
            leaks.append(f"{name} in the database: ...{db[max(0, at - 200):at + 50]}")
        for path, text in files.items():
            if canary in text:
                leaks.append(f"{name} in the file {path}")
    for name, canary in secrets.items():
        for text in seen.model_answers:
            if canary in text:
                leaks.append(f"{name} in a model's answer")
    assert not leaks, "\n".join(leaks)
    # the provider key went where it belongs (upstream), and nothing of the client's did
    assert requests and all(r.headers.get("authorization") == f"Bearer {PROVIDER_CANARY}" for r in requests)
    for r in requests:
        sent = json.dumps(r.headers) + r.body.decode("utf-8", "replace")
        assert MASTER_CANARY not in sent and keys["virtual"] not in sent and keys["revoked"] not in sent
    assert any(PROMPT_CANARY in text for text in seen.model_answers)  # the prompt did reach the models
    assert not evil_requests, "a client's field redirected an upstream call"
