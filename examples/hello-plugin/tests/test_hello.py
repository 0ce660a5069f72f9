"""Unit tests: the installed ``hello`` entry point in an isolated kernel (``make_kernel``)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from sira_hello import Greeter, SimpleGreeter

from sira_kernel import ChatRequest, Message, RequestInfo
from sira_kernel.kernel import Kernel
from sira_kernel.testing import FakeProviderPlugin, make_kernel

INFO = RequestInfo(method="POST", path="/v1/chat/completions", headers={})


def hello_kernel(plugins: dict[str, dict[str, object]]) -> Kernel:
    """A kernel running the installed ``hello`` plugin (or instances of it) and a fake provider.

    ``plugins`` maps ids to their ``[plugins.<id>]`` sections; every id in it is enabled.
    """
    return make_kernel({"fake": FakeProviderPlugin}, config={"plugins": plugins}, enable=["fake", *plugins])


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Bus delivery runs in the plugin's own task: poll, bounded, never a bare sleep."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def states(kernel: Kernel) -> dict[str, tuple[str, str | None]]:
    return {p.id: (p.state, p.reason) for p in (await kernel.health()).plugins}


def test_greeter_unit() -> None:
    greeter = SimpleGreeter("Hey")
    assert greeter.greet("Ada") == "Hey, Ada!"
    assert not greeter.healthy()


@pytest.mark.anyio
async def test_defaults_without_a_config_section() -> None:
    async with make_kernel(enable=["hello"]) as kernel:
        assert (await states(kernel))["hello"] == ("active", None)
        greeter = kernel.services.get(Greeter, "hello")
        assert greeter.greet("world") == "Hello, world!"


@pytest.mark.anyio
async def test_greeter_service_counts_gateway_requests() -> None:
    async with hello_kernel({"hello": {"greeting": "Hi"}}) as kernel:
        greeter = kernel.services.get(Greeter, "hello")
        assert greeter.greet("Ada") == "Hi, Ada!"
        assert greeter.requests_seen == 0
        request = ChatRequest(model="fake-1", messages=[Message(role="user", content="hi")])
        for _ in range(3):
            await kernel.pipeline.chat(request, INFO)
        await wait_for(lambda: greeter.requests_seen == 3)


@pytest.mark.anyio
async def test_lifespan_runs_while_active_and_unload_removes_the_service() -> None:
    async with hello_kernel({"hello": {}}) as kernel:
        greeter = kernel.services.get(Greeter, "hello")
        assert isinstance(greeter, SimpleGreeter) and greeter.running  # lifespan entered
        await kernel.unload("hello")
        assert not greeter.running  # lifespan exited
        assert kernel.services.find(Greeter, "hello") is None
        await kernel.load("hello")  # hot load: a new instance, its counter starts again
        reloaded = kernel.services.get(Greeter, "hello")
        assert reloaded is not greeter and reloaded.running


@pytest.mark.anyio
async def test_several_instances_with_use() -> None:
    french = {"use": "hello", "greeting": "Bonjour", "path": "/bonjour"}  # a second instance of the entry point
    async with hello_kernel({"hello": {}, "hello-fr": french}) as kernel:
        assert (await states(kernel))["hello-fr"] == ("active", None)
        greeters = kernel.services.all(Greeter)
        assert {name: g.greet("Ada") for name, g in greeters.items()} == {
            "hello": "Hello, Ada!",
            "hello-fr": "Bonjour, Ada!",
        }


@pytest.mark.anyio
async def test_a_bad_config_fails_only_this_plugin() -> None:
    async with hello_kernel({"hello": {"greting": "typo"}}) as kernel:
        found = await states(kernel)
        assert found["hello"][0] == "failed"
        assert "plugins.hello.greting: unknown key" in (found["hello"][1] or "")
        assert found["fake"] == ("active", None)
        assert kernel.services.find(Greeter, "hello") is None


@pytest.mark.anyio
async def test_two_instances_on_one_path_conflict() -> None:
    async with hello_kernel({"hello": {}, "hello-2": {"use": "hello"}}) as kernel:
        found = await states(kernel)
        # Both serve GET /hello: whichever starts second fails, the other keeps serving.
        assert sorted(state for state, _ in (found["hello"], found["hello-2"])) == ["active", "failed"]
