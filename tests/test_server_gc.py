"""``server.gc_freeze``: what a `sira serve` worker does to Python's collector once its kernel has
started (in a subprocess: the setting is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import asyncio, gc, json, sys
from sira_kernel.server import create_app

async def main():
    default = gc.get_threshold()[0]
    app = create_app()
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    started = await outbox.get()
    state = {"started": started["type"], "threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count(),
             "default": default}
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    print(json.dumps(state))

asyncio.run(main())
"""


def probe(tmp_path: Path, server: str) -> dict[str, object]:
    config = tmp_path / "kernel.toml"
    config.write_text(f'[kernel]\nplugins = []\n\n[server]\n{server}\n[logging]\nlevel = "error"\n')
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={"SIRA_CONFIG": str(config), "PATH": ""}, cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize(("server", "frozen"), [("", True), ("gc_freeze = false", False)])
def test_a_worker_freezes_its_startup_objects(tmp_path: Path, server: str, frozen: bool) -> None:
    state = probe(tmp_path, server)
    assert state["started"] == "lifespan.startup.complete"
    assert state["threshold"] == state["default"]  # the collector's thresholds are Python's own
    assert (state["frozen"] > 0) is frozen  # type: ignore[operator]
