"""Structured logging: JSON lines on stderr, levels, bound request ids, and secrets never printed."""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from sira_kernel import Secret
from sira_kernel.logs import REDACTED, configure_logging, get_logger, redact


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """configure_logging binds the (captured) stderr of this test; give other tests their config back."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.configure(**saved)


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    captured = capsys.readouterr()
    assert captured.out == ""  # logs go to stderr only
    return [json.loads(line) for line in captured.err.splitlines() if line.strip()]


def test_json_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    log = get_logger("sira.test")
    log.debug("cache.miss", key="models")
    log.info("plugin.active", plugin="fake", generation=3)
    first, second = json_lines(capsys)
    assert first["event"] == "cache.miss" and first["level"] == "debug" and first["key"] == "models"
    assert second == {**second, "event": "plugin.active", "level": "info", "plugin": "fake", "generation": 3}
    assert second["component"] == "sira.test"
    assert second["timestamp"].endswith("Z")


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "warning")
    log = get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in json_lines(capsys)] == ["loud"]


def test_registered_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    value = "tenant-password-93jd02kd"
    Secret(value)  # creating a Secret registers its value for redaction
    log = get_logger()
    log.info(
        f"connecting with {value}",
        url=f"postgres://app:{value}@db/sira",
        nested={"headers": [("x-token", value)], "count": 2},
    )
    raw = capsys.readouterr().err
    assert value not in raw
    line = json.loads(raw)
    assert line["event"] == f"connecting with {REDACTED}"
    assert line["url"] == f"postgres://app:{REDACTED}@db/sira"
    assert line["nested"] == {"headers": [["x-token", REDACTED]], "count": 2}


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.DEF-123_456789",
        "key=sk-proj-AbCdEf0123456789",
        "upstream said: invalid key sk-ant-api03-zzzzzzzzzzzz",
    ],
)
def test_bearer_tokens_and_sk_keys_are_redacted(capsys: pytest.CaptureFixture[str], text: str) -> None:
    configure_logging("json", "debug")
    get_logger().warning("upstream.rejected", detail=text)
    raw = capsys.readouterr().err
    token = text.split()[-1].split("=")[-1]
    assert token not in raw
    assert REDACTED in json.loads(raw)["detail"]


def test_secrets_in_exceptions_and_tracebacks_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    value = "exception-secret-5521aa"
    Secret(value)
    log = get_logger()
    try:
        raise ConnectionError(f"login failed for {value} with sk-abcdefgh12345678")
    except ConnectionError as exc:
        log.exception("provider.failed", error=exc)
    raw = capsys.readouterr().err
    assert value not in raw and "sk-abcdefgh12345678" not in raw
    line = json.loads(raw)
    assert "ConnectionError" in line["exception"] and "ConnectionError" in line["error"]


def test_values_of_any_shape_are_logged_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    Point = namedtuple("Point", "x y")
    get_logger().info("shapes", point=Point(1, "sk-abcdefgh12345678"), items=("a", "Bearer abcdefgh1234"))
    line = json.loads(capsys.readouterr().err)
    assert line["point"] == [1, REDACTED]
    assert line["items"] == ["a", REDACTED]


def test_short_values_are_not_registered_as_secrets() -> None:
    Secret("abc")  # would otherwise redact every "abc" in every line
    assert redact("abc abcdef") == "abc abcdef"


def test_the_bound_request_id_appears_in_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    log = get_logger("sira.pipeline")
    structlog.contextvars.bind_contextvars(request_id="req-1a-2b")
    log.info("request.start")
    get_logger("provider.mock").info("upstream.call")
    structlog.contextvars.clear_contextvars()
    log.info("idle")
    lines = json_lines(capsys)
    assert [line.get("request_id") for line in lines] == ["req-1a-2b", "req-1a-2b", None]


def test_console_format_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "info")
    get_logger().info("calling", key="sk-abcdefgh12345678")
    raw = capsys.readouterr().err
    assert "calling" in raw and "sk-abcdefgh12345678" not in raw and REDACTED in raw
