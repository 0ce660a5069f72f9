"""The README's examples and the example configs work as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sira_kernel import Kernel, load_config
from sira_kernel.testing import free_port

from .test_cli import SIRA, wait_ready

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def repo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`sira serve` with the repository's own kernel.toml, as `make serve` runs it (on a free port)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    command = [*SIRA, "serve", "--config", "kernel.toml", "--port", str(port), "--admin-port", str(free_port())]
    process = subprocess.Popen(command, cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=30)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_readme_python_example_runs_as_written(repo_gateway: str) -> None:
    [example] = [b for b in _blocks("python") if "OpenAI(" in b]
    code = example.replace("http://127.0.0.1:8080", repo_gateway)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert first == "This is a mock reply to: Hello, Sira!"
    assert second == "This is a mock reply to: Stream please"


def test_example_client_script_runs(repo_gateway: str) -> None:
    code = (REPO / "examples/clients/openai_sdk.py").read_text().replace("http://127.0.0.1:8080", repo_gateway)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Hello, Sira!" in result.stdout and "tokens]" in result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_run_as_written(repo_gateway: str) -> None:
    [block] = [b for b in _blocks("sh") if "curl -s" in b]
    commands = re.findall(r"^(curl .*?)(?=^\s*$|^#|^curl |\Z)", block, re.S | re.M)
    assert len(commands) == 4
    for command in commands:
        command = command.replace("http://127.0.0.1:8080", repo_gateway).replace("\\\n", " ")
        result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout, command
        assert '"error"' not in result.stdout, (command, result.stdout)
        if '"stream": true' in command:
            assert result.stdout.rstrip().endswith("data: [DONE]")


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "examples/configs").glob("*.toml")))
async def test_example_configs_boot_every_plugin(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SIRA_MASTER_KEY", "OPENAI_API_KEY", "OPENAI_PROD_KEY", "GROQ_API_KEY", "AZURE_OPENAI_KEY"):
        monkeypatch.setenv(var, f"sk-example-{var.lower()}-0123456789")
    monkeypatch.setenv("AZURE_RESOURCE", "example")
    config = load_config(REPO / "examples/configs" / name)
    async with Kernel(config) as kernel:
        infos = {i.id: i for i in kernel.plugins.infos()}
        for plugin_id in config.enabled_plugins():
            assert infos[plugin_id].state == "active", (plugin_id, infos[plugin_id].reason)
        assert kernel.snapshot.providers
