"""Helpers for testing Sira plugins: isolated kernels, a fake provider and a real server in a thread.

* :func:`make_kernel` builds a kernel that sees only the plugins you hand it (no entry-point
  autoload), with a config given as a plain dict shaped like kernel.toml.
* :class:`FakeProvider` / :class:`FakeProviderPlugin` answer chat, stream and embed deterministically,
  and can be told to fail, hang or stream slowly, so a plugin can be tested against a provider
  without any network.
* :class:`ServerThread` serves a kernel over real HTTP on 127.0.0.1 (uvicorn in a background thread)
  so tests can use real clients (``httpx``, the ``openai`` SDK) against it, and run coroutines on
  the server's loop (``server.call(kernel.unload, "x")``).

The modules beside it:

* :mod:`~sira_kernel.testing.loopback`: ``LoopbackUpstream``, the machinery of every fake upstream
  (a real HTTP server on loopback, recorded requests, queued faults, stream counters, fixtures);
* :mod:`~sira_kernel.testing.fake_openai`, :mod:`~sira_kernel.testing.fake_anthropic`,
  :mod:`~sira_kernel.testing.fake_gemini`: fake upstreams speaking OpenAI's, Anthropic's and
  Gemini's wire formats, from documented, checked-in example exchanges;
* :mod:`~sira_kernel.testing.providers`: what a provider adapter's tests share (fixtures, request and
  stream helpers, byte-split strategies) and the suites ``UpstreamFailureSuite``,
  ``StreamSplitSuite`` and ``ProviderPluginContract``;
* :mod:`~sira_kernel.testing.conformance`: ``ConformanceSuite``, the suite every provider adapter
  must pass through a real kernel, and the capability matrix it produces (``docs/providers.md``);
* :mod:`~sira_kernel.testing.gateway`: end-to-end helpers (a standard gateway config, the usage
  records a kernel publishes, a check that nothing is left held);
* :mod:`~sira_kernel.testing.storage_contract`: the contract tests of storage backends.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio
import msgspec
import uvicorn

from ..asgi import KernelApp
from ..config import KernelConfig, parse_config
from ..hookspecs import hookimpl
from ..kernel import Kernel
from ..plugins import LocalEntryPoint
from ..providers import CallContext, Capabilities
from ..registrations import ProviderRegistrar
from ..types import (
    ChatChoice,
    ChatRequest,
    ChatResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    Message,
    ModelInfo,
    StreamEvent,
    StreamStart,
    TextDelta,
    Usage,
)

__all__ = ["FakeProvider", "FakeProviderPlugin", "ServerThread", "free_port", "make_config", "make_kernel"]

T = TypeVar("T")


def make_config(data: Mapping[str, Any] | None = None, plugins: list[str] | None = None) -> KernelConfig:
    """A validated KernelConfig from a kernel.toml-shaped dict; ``plugins`` sets ``kernel.plugins``."""
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (data or {}).items()}
    if plugins is not None:
        raw.setdefault("kernel", {})["plugins"] = list(plugins)
    return parse_config(raw, "<test>")


def make_kernel(
    plugins: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | KernelConfig | None = None,
    enable: list[str] | None = None,
) -> Kernel:
    """An isolated kernel: only ``plugins`` (id → class or loader callable) are discoverable.

    Every given plugin is enabled unless ``enable`` lists the ids to enable. Installed
    distributions stay invisible unless their ids are enabled explicitly in ``config``.
    """
    plugins = dict(plugins or {})
    if isinstance(config, KernelConfig):
        cfg = config
    else:
        ids = list(enable) if enable is not None else list(plugins)
        data = dict(config or {})
        kernel_section = dict(data.get("kernel", {}))
        kernel_section.setdefault("plugins", ids)
        kernel_section.setdefault("autoload", False)
        data["kernel"] = kernel_section
        cfg = make_config(data)
    kernel = Kernel(cfg)
    for plugin_id, target in plugins.items():
        kernel.plugins.add_source(LocalEntryPoint(plugin_id, target, distribution=f"test-{plugin_id}"))
    return kernel


# -- a fake provider ---------------------------------------------------------------------------------


class FakeProvider:
    """A deterministic in-process provider.

    It serves its chat ``models`` and one embedding model named ``<first model>-embed``.
    ``reply`` is the text answered (streamed as one word per chunk, ``delay`` seconds apart).
    Set ``fail`` to an exception to raise it, ``hang`` to never answer.
    """

    def __init__(
        self,
        name: str = "fake",
        models: list[str] | None = None,
        reply: str = "Hello from the fake provider",
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.capabilities = Capabilities(vision=True, embeddings=True)
        self._models = models or ["fake-1"]
        self.reply = reply
        self.delay = delay
        self.fail: Exception | None = None
        self.hang = False
        self.report_usage = True  # False: streams end without a Usage event, responses without usage
        self.calls = 0
        self.closed_streams = 0

    def models(self) -> list[ModelInfo]:
        chat = [ModelInfo(id=m, owned_by=self.name) for m in self._models]
        return [*chat, ModelInfo(id=f"{self._models[0]}-embed", owned_by=self.name, kind="embedding")]

    async def _maybe_fail(self) -> None:
        self.calls += 1
        if self.hang:
            await anyio.sleep_forever()
        if self.fail is not None:
            raise self.fail

    def _usage(self, request: ChatRequest) -> Usage:
        prompt = sum(len(str(m.content or "").split()) for m in request.messages)
        completion = len(self.reply.split())
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        await self._maybe_fail()
        if self.delay:
            await anyio.sleep(self.delay)
        return ChatResponse(
            id=f"chatcmpl-fake-{self.calls}", model=ctx.upstream_model, created=int(time.time()),
            choices=[ChatChoice(0, Message("assistant", self.reply), "stop")],
            usage=self._usage(request) if self.report_usage else None,
        )

    async def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
        await self._maybe_fail()
        try:
            yield StreamStart(id=f"chatcmpl-fake-{self.calls}", model=ctx.upstream_model, created=int(time.time()))
            for i, word in enumerate(self.reply.split()):
                if self.delay:
                    await anyio.sleep(self.delay)
                yield TextDelta(word if i == 0 else " " + word)
            yield Finish("stop")
            if self.report_usage:
                yield self._usage(request)
        finally:
            self.closed_streams += 1

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        await self._maybe_fail()
        inputs = [request.input] if isinstance(request.input, str) else list(request.input)
        data = [EmbeddingData(i, [float(len(str(x))), 1.0, 0.0]) for i, x in enumerate(inputs)]
        return EmbeddingResponse(data=data, model=ctx.upstream_model, usage=Usage(len(inputs), 0, len(inputs)))


class FakeProviderPlugin:
    """A plugin registering one :class:`FakeProvider` named after the plugin id."""

    sira_api = 1

    class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        models: list[str] = msgspec.field(default_factory=lambda: ["fake-1"])
        reply: str = "Hello from the fake provider"
        delay: float = 0.0

    def __init__(self, config: Config) -> None:
        self.config = config
        self.provider: FakeProvider | None = None

    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        self.provider = FakeProvider(register.owner, self.config.models, self.config.reply, self.config.delay)
        register(self.provider)




# -- a real server in a thread -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
        pass


class ServerThread:
    """Serve a kernel over HTTP on 127.0.0.1 from a background thread.

    ``with ServerThread(lambda: make_kernel(...)) as server:`` → ``server.base_url`` (public API),
    ``server.admin_url`` (admin listener), ``server.kernel`` and ``server.call(async_fn, *args)`` to run
    on the server's event loop.
    """

    def __init__(
        self, factory: Callable[[], Kernel], port: int | None = None, listener: str = "public",
        admin_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.app = KernelApp(factory, listener, admin_ports=frozenset({self.admin_port}))
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            loop="asyncio", http="h11", lifespan="on", timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def kernel(self) -> Kernel:
        assert self.app.kernel is not None, "the server is not running"
        return self.app.kernel

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        sockets = []
        for port in (self.port, self.admin_port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sockets.append(sock)
        try:
            loop.run_until_complete(self._server.serve(sockets=sockets))
        finally:
            for sock in sockets:
                sock.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name=f"sira-test-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the test server failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start within 20s")
            time.sleep(0.01)
        return self

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30) -> T:
        """Run ``fn(*args)`` on the server's event loop and return its result."""
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
        """Like :meth:`call`, but return the future at once."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), self._loop)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
