"""Hot load: a distribution installed after the kernel started is found by ``kernel.load`` and serves.

The distribution is real: a module plus a ``.dist-info`` directory on a path entry, exactly what
``pip install`` leaves in a site directory. The second test runs ``pip install --target`` itself.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sira_kernel import ChatRequest, Message, PluginLoadError, RequestInfo
from sira_kernel.kernel import Kernel
from sira_kernel.testing import make_kernel

pytestmark = pytest.mark.anyio

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={})

PLUGIN_SOURCE = textwrap.dedent(
    """
    from sira_kernel import hookimpl
    from sira_kernel.testing import FakeProvider


    class HotPlugin:
        sira_api = 1

        @hookimpl
        def sira_register_providers(self, register):
            register(FakeProvider(register.owner, ["{model}"], "{reply}"))
    """
)


@pytest.fixture
def site_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory that is put on ``sys.path`` like a site directory, and taken off afterwards."""
    directory = tmp_path / "site"
    directory.mkdir()
    before = set(sys.modules)
    try:
        yield directory
    finally:
        while str(directory) in sys.path:
            sys.path.remove(str(directory))
        sys.path_importer_cache.pop(str(directory), None)
        for name in set(sys.modules) - before:
            module_file = getattr(sys.modules[name], "__file__", None) or ""
            if module_file.startswith(str(directory)):
                del sys.modules[name]
        importlib.invalidate_caches()


def write_distribution(site: Path, module: str, plugin_id: str, model: str, reply: str) -> None:
    (site / f"{module}.py").write_text(PLUGIN_SOURCE.format(model=model, reply=reply))
    dist_info = site / f"{module.replace('_', '-')}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[sira_kernel.plugins]\n{plugin_id} = {module}:HotPlugin\n")
    (dist_info / "RECORD").write_text("")


async def answer(kernel: Kernel, model: str) -> str:
    response = await kernel.pipeline.chat(ChatRequest(model=model, messages=[Message("user", "hi")]), INFO)
    return str(response.choices[0].message.content)


async def test_a_distribution_written_after_start_is_hot_loaded(site_dir: Path) -> None:
    async with make_kernel({}) as kernel:
        assert "hot-demo" not in kernel.plugins.available()
        with pytest.raises(PluginLoadError, match="no installed plugin provides"):
            await kernel.load("hot-demo")

        write_distribution(site_dir, "hot_demo", "hot-demo", "hot-1", "hot reply")
        sys.path.append(str(site_dir))

        info = await kernel.load("hot-demo")
        assert info.state == "active"
        assert info.distribution == "hot-demo" and info.version == "0.1"
        assert await answer(kernel, "hot-1") == "hot reply"

        await kernel.unload("hot-demo")
        assert "hot-demo" not in kernel.snapshot.providers
        # Loading again uses the already-imported module (no reload), a fresh instance.
        await kernel.load("hot-demo")
        assert await answer(kernel, "hot-1") == "hot reply"


SETUPTOOLS_PROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "sira-hot-pip"
version = "0.2"

[project.entry-points."sira_kernel.plugins"]
hot-pip = "hot_pip:HotPlugin"

[tool.setuptools]
py-modules = ["hot_pip"]
"""


def pip_install_offline(source: Path, target: Path) -> None:
    """``pip install --target`` without network; skips the test when that cannot work here."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
        "--no-index", "--no-deps", "--no-build-isolation", "--target", str(target), str(source),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"pip is not usable here: {exc}")
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if "No module named pip" in output or "bdist_wheel" in output or "BackendUnavailable" in output:
            # setuptools < 70.1 needs the 'wheel' package to build a wheel without build isolation.
            pytest.skip("pip cannot build a setuptools project offline in this environment")
        raise AssertionError(f"pip install failed:\n{output}")


async def test_a_distribution_pip_installed_after_start_is_hot_loaded(tmp_path: Path, site_dir: Path) -> None:
    source = tmp_path / "sira-hot-pip"
    source.mkdir()
    (source / "pyproject.toml").write_text(SETUPTOOLS_PROJECT)
    (source / "hot_pip.py").write_text(PLUGIN_SOURCE.format(model="pip-1", reply="installed by pip"))

    async with make_kernel({}) as kernel:
        sys.path.append(str(site_dir))  # the site directory exists before the install, as in production
        pip_install_offline(source, site_dir)
        assert list(site_dir.glob("sira_hot_pip-0.2.dist-info/entry_points.txt"))

        info = await kernel.load("hot-pip")
        assert info.distribution == "sira-hot-pip" and info.version == "0.2"
        assert await answer(kernel, "pip-1") == "installed by pip"
