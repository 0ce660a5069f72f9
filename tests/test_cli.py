"""The ``sira`` command line, run as a real subprocess the way an operator runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sira_kernel.testing import free_port

REPO = Path(__file__).resolve().parents[1]
SIRA = [sys.executable, "-m", "sira_kernel"]


def run(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SIRA, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "kernel.toml"
    path.write_text(textwrap.dedent(f"""
        [kernel]
        plugins = ["api-openai", "provider-mock"]
        data_dir = "{tmp_path / 'data'}"

        [server]
        host = "127.0.0.1"
        port = {port}
        admin_port = {free_port()}
        graceful_timeout = 20

        [logging]
        level = "warning"

        [plugins.provider-mock]
        models = ["mock-1"]
        pace_ms = 100
    """) + textwrap.dedent(extra))
    return path


def wait_ready(url: str, process: subprocess.Popen[str] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/health/live", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become ready")


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def served(tmp_path: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    config = write_config(tmp_path, port)
    process = subprocess.Popen([*SIRA, "serve", "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_check_repo_config_reports_each_plugin() -> None:
    result = run("check", "--config", str(REPO / "kernel.toml"), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "api-openai" in result.stdout and "provider-mock" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.startswith("  ")}
    assert "active" in lines["provider-mock"]
    if not os.environ.get("OPENAI_API_KEY"):
        assert "skipped" in lines["provider-openai"]


def test_check_bad_config_is_one_clear_line(tmp_path: Path, port: int) -> None:
    config = write_config(tmp_path, port, "\n[server.extra]\nnope = 1\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "server.extra: unknown key" in result.stderr and "Traceback" not in result.stderr


def test_check_missing_file_and_bad_toml(tmp_path: Path) -> None:
    missing = run("check", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such config file" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[kernel\nplugins = 1")
    result = run("check", "--config", str(broken))
    assert result.returncode == 2 and "invalid TOML" in result.stderr and "Traceback" not in result.stderr


def test_check_failed_plugin_exits_1_with_reason(tmp_path: Path, port: int) -> None:
    config = write_config(tmp_path, port, '\n[plugins.api-openai]\nprefixes = "not-a-list"\n')
    result = run("check", "--config", str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if "api-openai" in line)
    assert "failed" in line and "plugins.api-openai.prefixes" in line
    assert "provider-mock" in result.stdout  # the rest still booted


def test_plugins_list_and_info(tmp_path: Path, port: int) -> None:
    config = write_config(tmp_path, port)
    listing = run("plugins", "list", "--config", str(config))
    assert listing.returncode == 0
    rows = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines()[1:]}
    assert rows["provider-mock"] == "yes" and rows["provider-openai"] == "no"
    info = run("plugins", "info", "provider-mock")
    assert info.returncode == 0 and "sira-provider-mock" in info.stdout and "[plugins.provider-mock]" in info.stdout
    unknown = run("plugins", "info", "no-such-plugin")
    assert unknown.returncode == 2 and "no installed plugin" in unknown.stderr


def test_serve_port_in_use_is_one_clear_line(tmp_path: Path, port: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = run("serve", "--config", str(write_config(tmp_path, port)))
    assert result.returncode == 2
    assert result.stderr.strip() == f"sira: error: port {port} on 127.0.0.1 is already in use"


def test_serve_admin_port_in_use_is_one_clear_line(tmp_path: Path, port: int) -> None:
    admin = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", admin))
        busy.listen()
        result = run("serve", "--config", str(write_config(tmp_path, port)), "--admin-port", str(admin))
    assert result.returncode == 2
    assert result.stderr.strip() == f"sira: error: admin port {admin} on 127.0.0.1 is already in use"


def test_serve_admin_listener_answers_only_the_master_key(tmp_path: Path, port: int) -> None:
    admin = free_port()
    config = write_config(tmp_path, port)
    key = 'master_key = "sk-cli-master-0123"'
    config.write_text(config.read_text().replace("graceful_timeout = 20", f"graceful_timeout = 20\n{key}"))
    process = subprocess.Popen([*SIRA, "serve", "--config", str(config), "--admin-port", str(admin)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        url = f"http://127.0.0.1:{admin}/api/v1/plugins"
        assert httpx.get(url).status_code == 401
        listed = httpx.get(url, headers={"authorization": "Bearer sk-cli-master-0123"})
        assert listed.status_code == 200
        assert {p["id"] for p in listed.json()["plugins"]} >= {"api-openai", "provider-mock"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/plugins").status_code in (401, 404)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_serve_answers_and_sigterm_drains_open_stream(served: tuple[subprocess.Popen[str], str]) -> None:
    process, url = served
    body = {"model": "mock-1", "stream": True, "messages": [{"role": "user", "content": "one two three four five"}]}
    lines: list[str] = []
    finished = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
        finished.set()

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 10
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lines) >= 2  # the stream is open and paced (100 ms per token)
    process.send_signal(signal.SIGTERM)
    reader.join(30)
    assert finished.is_set()
    assert lines[-1] == "data: [DONE]"  # the open stream completed during shutdown
    # uvicorn re-raises the signal once its graceful shutdown (and the kernel's drain) is done
    assert process.wait(30) in (0, -signal.SIGTERM)
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_start_status_stop(tmp_path: Path, port: int) -> None:
    config = str(write_config(tmp_path, free_port()))  # `start --port` overrides it; status must follow
    try:
        started = run("start", "--config", config, "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert (tmp_path / "data" / "sira.pid").exists()
        status = run("status", "--config", config)
        assert status.returncode == 0 and "running" in status.stdout and "provider-mock" in status.stdout
        again = run("start", "--config", config)
        assert again.returncode == 2 and "already running" in again.stderr
    finally:
        stopped = run("stop", "--config", config)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (tmp_path / "data" / "sira.pid").exists()
    after = run("status", "--config", config)
    assert after.returncode == 1 and "not running" in after.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
