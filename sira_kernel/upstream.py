"""The HTTP plumbing every provider adapter needs to talk to one upstream, so an adapter is left with
its wire format: how requests are encoded, how answers and streams are parsed, what the upstream's
error bodies look like and which kernel error each status maps to.

* :class:`Upstream`: one pooled aiohttp session (opened in the plugin's lifespan) and every exchange
  with it: adapters build ``httpx.Request`` objects, which go out through aiohttp without httpx's
  client, transport adapter or response objects on the way; the kernel's deadlines
  (:class:`~sira_kernel.providers.CallContext`, tightened by the plugin's own timeouts) are enforced
  without spanning a ``yield`` (one timer per stream phase, not one per read); reads are bounded by
  ``max_response_bytes``; a finished stream is drained so its connection returns to the pool; every
  exit path closes the response; failures become the kernel's ``ProviderError`` tree.
* :class:`UpstreamProvider`: a base class giving an adapter that owns an :class:`Upstream` its
  ``open``/``aclose`` and ``async with``; :func:`provider_lifespan` runs it in ``sira_lifespan``;
  :class:`UpstreamProviderPlugin` is a plugin serving one such provider.
* :class:`StreamCodec` / :class:`StreamParser`: what an adapter implements so that
  :meth:`Upstream.stream` can run a streamed chat for it.
* :func:`sanitize`, :func:`parse_retry_after`, :func:`transport_error`: the pieces adapters use in
  their own error mapping.

A minimal adapter::

    class MyProvider(UpstreamProvider):
        def __init__(self, name: str, config: MyConfig) -> None:
            self.name = name
            self.upstream = Upstream(self, config, secrets=[key], status_error=my_status_error)

        async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
            upstream = self.upstream
            http_request = httpx.Request("POST", URL, content=encode(request), extensions=upstream.extensions(ctx))
            return decode(await upstream.fetch(http_request, upstream.deadlines(ctx), ctx.max_response_bytes))

        def stream(self, request: ChatRequest, ctx: CallContext) -> AsyncIterator[StreamEvent]:
            return self.upstream.stream(self, request, ctx)  # with stream_request/_parser/_json below
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, Self, TypeAlias, TypeVar, cast

import aiohttp
import anyio
import httpx
import msgspec

from .deadline import TaskDeadline
from .errors import ProviderError, ProviderTimeout, ProviderUnavailable
from .hookspecs import hookimpl
from .logs import REDACTED, redact
from .providers import CallContext, EventBatches, Provider
from .types import ChatRequest, ModelInfo, StreamEvent

if TYPE_CHECKING:
    from .context import PluginContext
    from .registrations import ProviderRegistrar

__all__ = [
    "ERROR_BODY_LIMIT",
    "MAX_MESSAGE",
    "Deadlines",
    "StatusErrorMapper",
    "StreamCodec",
    "StreamParser",
    "Upstream",
    "UpstreamConfig",
    "UpstreamProvider",
    "UpstreamProviderPlugin",
    "UpstreamSettings",
    "parse_retry_after",
    "provider_lifespan",
    "request_headers",
    "served_models",
    "sanitize",
    "transport_error",
]

#: How long a quoted upstream message may be (longer ones are cut and end with "…").
MAX_MESSAGE = 500
#: Non-2xx answers: read at most this much of the error body, for at most this long.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_BODY_WAIT = 5.0
#: After a stream's end marker, read the rest of the body (the chunked terminator) for this long at
#: most so the connection can return to the pool instead of being closed.
DRAIN_WAIT = 1.0
DRAIN_LIMIT = 64 * 1024
_CACHE_LIMIT = 1024

#: ``(first-token timeout, its deadline, total timeout, its deadline)``: seconds, then anyio clock
#: times. A plain tuple because it is made on every call.
Deadlines: TypeAlias = tuple[float, float, float, float]


# -- error helpers ----------------------------------------------------------------------------------


def sanitize(text: str, secrets: Iterable[str]) -> str:
    """``text`` truncated to :data:`MAX_MESSAGE` characters with every secret (and key-like token)
    redacted: for quoting an upstream's own words in an error message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = redact(text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "…"
    return text


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI's) or ``Retry-After`` (seconds or an HTTP
    date); None without either."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transport_error(
    exc: BaseException, *, provider: str, secrets: Iterable[str], label: str = "upstream"
) -> ProviderError:
    """The kernel error for a failure to talk to the upstream at all: ``ProviderTimeout`` for a
    timeout, ``ProviderUnavailable`` for anything else (refused, reset, closed connections).
    ``label`` names the upstream in the message ("upstream", "Anthropic").
    """
    detail = sanitize(str(exc) or type(exc).__name__, secrets)
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return ProviderTimeout(f"{label} timed out: {detail}", provider=provider)
    return ProviderUnavailable(f"{label} connection failed: {detail}", provider=provider)


def request_headers(
    user_agent: str, configured: Mapping[str, str], own: Mapping[str, str]
) -> tuple[httpx.Headers, httpx.Headers]:
    """The headers of every request to one upstream: ``(for JSON answers, for SSE streams)``.

    ``configured`` are the operator's extra headers (names lower-cased; they override the defaults),
    ``own`` the adapter's (credentials, API version), which override both. ``accept-encoding:
    identity``: a gateway relays streams as they arrive and should not spend CPU inflating them.
    """
    headers = {"content-type": "application/json", "accept-encoding": "identity", "user-agent": user_agent}
    headers.update({name.lower(): value for name, value in configured.items()})
    headers.update(own)
    return (
        httpx.Headers({**headers, "accept": "application/json"}),
        httpx.Headers({**headers, "accept": "text/event-stream"}),
    )


def served_models(
    models: Iterable[str],
    aliases: Mapping[str, str],
    *,
    embedding_models: Iterable[str] = (),
    discovered: Iterable[ModelInfo] = (),
    owned_by: str = "sira",
) -> list[ModelInfo]:
    """What an adapter's ``models()`` lists: the configured chat and embedding models (sent upstream
    under their own names), each alias (an ``embedding`` model when its target is one), then the
    discovered models the configuration does not already name."""
    embedding = list(embedding_models)
    infos: dict[str, ModelInfo] = {}
    for model in models:
        infos.setdefault(model, ModelInfo(id=model, owned_by=owned_by, upstream=model))
    for model in embedding:
        infos.setdefault(model, ModelInfo(id=model, owned_by=owned_by, upstream=model, kind="embedding"))
    for alias, target in aliases.items():
        kind: Literal["chat", "embedding"] = "embedding" if target in embedding else "chat"
        infos[alias] = ModelInfo(id=alias, owned_by=owned_by, upstream=target, kind=kind)
    for info in discovered:
        infos.setdefault(info.id, info)
    return list(infos.values())


def _header(response: aiohttp.ClientResponse, name: bytes) -> bytes | None:
    """The first value of the response header ``name`` (lower case), from the raw list
    (``response.headers`` would build a case-insensitive multidict first)."""
    for key, value in response.raw_headers:
        if key == name or key.lower() == name:
            return value
    return None


def _close(response: aiohttp.ClientResponse) -> None:
    """Give the response's connection back to the pool, or close it when the body was not read to
    its end (aiohttp decides; it also stops the request's body writer). Synchronous, so no
    cancellation can interrupt it."""
    with contextlib.suppress(Exception):
        response.release()


# -- protocols --------------------------------------------------------------------------------------


_Positive = Annotated[float, msgspec.Meta(gt=0)]


class UpstreamSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The config keys every HTTP upstream shares, validated once: subclass it for an adapter's
    ``Config`` (``class MyConfig(UpstreamSettings, kw_only=True, forbid_unknown_fields=True)``) and add
    the adapter's own keys. It is what :class:`Upstream` reads (:class:`UpstreamConfig`) plus the
    operator's extra ``headers`` (for :func:`request_headers`)."""

    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra static headers on every upstream request (their values are redacted from errors)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 256
    """Connection pool size for this upstream."""
    keepalive_expiry: _Positive = 30.0
    """Seconds an idle pooled connection is kept open."""
    connect_timeout: _Positive | None = None
    """Tighten the kernel's ``limits.connect_timeout`` for this upstream (the smaller one wins)."""
    first_token_timeout: _Positive | None = None
    """Tighten the kernel's ``limits.first_token_timeout`` for this upstream (the smaller one wins)."""
    total_timeout: _Positive | None = None
    """Tighten the kernel's ``limits.total_timeout`` for this upstream (the smaller one wins)."""
    ca_bundle: str | None = None
    """A PEM file of CA certificates to trust instead of the default ones (a proxy with its own CA)."""
    proxy: str | None = None
    """An HTTP(S) proxy URL for this upstream (environment proxy variables are never read)."""


class UpstreamConfig(Protocol):
    """The keys of a provider's config section that :class:`Upstream` reads (a msgspec config struct
    with these fields fits)."""

    @property
    def max_connections(self) -> int:
        """Connection pool size (every pooled connection may be kept alive)."""
        ...

    @property
    def keepalive_expiry(self) -> float:
        """Seconds an idle pooled connection is kept open."""
        ...

    @property
    def connect_timeout(self) -> float | None:
        """Tightens ``CallContext.connect_timeout`` (the smaller one wins); None: the kernel's."""
        ...

    @property
    def first_token_timeout(self) -> float | None:
        """Tightens ``CallContext.first_token_timeout``."""
        ...

    @property
    def total_timeout(self) -> float | None:
        """Tightens ``CallContext.total_timeout``."""
        ...

    @property
    def ca_bundle(self) -> str | None:
        """A PEM file of CA certificates to trust instead of the default ones."""
        ...

    @property
    def proxy(self) -> str | None:
        """An HTTP(S) proxy URL (environment proxy variables are never read)."""
        ...


class StatusErrorMapper(Protocol):
    """An adapter's mapping of a non-2xx answer (``body`` is at most 64 KiB of it) to a kernel error.

    ``secrets`` must be redacted from anything quoted (:func:`sanitize` does it).
    """

    def __call__(
        self, status: int, headers: Mapping[str, str], body: bytes, *, provider: str, secrets: Iterable[str]
    ) -> ProviderError: ...


class _Named(Protocol):
    name: str


class StreamParser(Protocol):
    """Turns a streamed body into kernel events, fed raw bytes as they arrive (one per stream).

    ``started``: ``StreamStart`` was emitted. ``done``: the upstream's end marker arrived (the rest
    of the body is drained, not parsed). ``failure``: the upstream reported an error in-stream or
    sent something unreadable; nothing is parsed after it.
    """

    started: bool
    done: bool
    failure: ProviderError | None

    def feed(self, raw: bytes) -> list[StreamEvent]:
        """The events ``raw`` completes, in a new list (it is handed on as one batch)."""
        ...

    def end(self) -> list[StreamEvent]:
        """The body ended before ``done``: the events still owed (a new list), or ``failure`` set
        when the answer was cut short."""
        ...


P = TypeVar("P", bound=StreamParser)


class StreamCodec(Protocol[P]):
    """What :meth:`Upstream.stream` needs from an adapter: its side of a streamed chat (``P`` is the
    adapter's :class:`StreamParser`)."""

    def stream_request(self, request: ChatRequest, ctx: CallContext) -> httpx.Request:
        """The upstream request for ``request`` (raise ``ProviderRejected`` if it cannot be sent;
        take ``extensions`` from :meth:`Upstream.extensions`)."""
        ...

    def stream_parser(self, ctx: CallContext) -> P:
        """A fresh parser for one stream."""
        ...

    def stream_json(self, data: bytes, ctx: CallContext, parser: P) -> list[StreamEvent]:
        """The events of a whole JSON answer to a stream request (servers that ignore ``stream``).

        Raise for an unreadable answer; or set ``parser.failure`` (raised when nothing started,
        else sent as a ``StreamError`` after the events).
        """
        ...


# -- the upstream -----------------------------------------------------------------------------------


class Upstream:
    """One upstream's pooled client and every exchange with it, for the provider ``owner``.

    ``owner.name`` (read when an error is made) names the provider in errors; ``secrets`` (the API
    key, header values; ones shorter than 4 characters are ignored) are redacted from every message;
    ``status_error`` maps non-2xx answers; ``label`` names the upstream in messages ("upstream sent no
    response within 5s"). :meth:`open` creates the client, :meth:`aclose` closes it.
    """

    def __init__(
        self,
        owner: _Named,
        config: UpstreamConfig,
        *,
        secrets: Iterable[str | None] = (),
        status_error: StatusErrorMapper,
        label: str = "upstream",
    ) -> None:
        self.config = config
        self.secrets: tuple[str, ...] = tuple(v for v in secrets if v and len(v) >= 4)
        self.label = label
        self._owner = owner
        self._status_error = status_error
        self._first_token_timeout = config.first_token_timeout
        self._total_timeout = config.total_timeout
        self._connect_timeout = config.connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxy: dict[str, Any] = {}
        self._proxy_authorization: str | None = None
        self._extensions: dict[float, dict[str, Any]] = {}
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._default_connect = 10.0

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self, *, connect_timeout: float = 10.0) -> None:
        """Create the pooled session (idempotent): ``max_connections`` kept-alive connections at most,
        ``keepalive_expiry``, ``ca_bundle`` and ``proxy`` from the config; no environment proxies,
        no redirects, no cookies kept (an upstream's cookies are never sent back, to anyone).
        ``connect_timeout`` bounds the connect of a request whose extensions carry no timeout."""
        if self._session is not None:
            return
        self._default_connect = connect_timeout
        config = self.config
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=config.ca_bundle) if config.ca_bundle else True
        )
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        proxy = httpx.Proxy(config.proxy) if config.proxy else None
        if proxy is not None:
            # The proxy's credentials: aiohttp sends ``proxy_headers`` on a CONNECT (https upstreams)
            # only, so plain-http requests carry the header themselves (its ``BasicAuth`` is deprecated).
            proxy_headers = dict(proxy.headers)
            if proxy.auth:
                credentials = base64.b64encode(f"{proxy.auth[0]}:{proxy.auth[1]}".encode()).decode()
                proxy_headers["Proxy-Authorization"] = self._proxy_authorization = f"Basic {credentials}"
            self._proxy = {"proxy": str(proxy.url), "proxy_headers": proxy_headers or None}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=config.max_connections, keepalive_timeout=config.keepalive_expiry, ssl=ssl_context
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the session and its connections (after the kernel drained every call using them)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- per-call settings --------------------------------------------------------------------------

    def post(self, url: httpx.URL | str, headers: httpx.Headers, body: bytes, ctx: CallContext) -> httpx.Request:
        """The ``POST`` of ``body`` to ``url`` for the call ``ctx``: what ``httpx.Request("POST", url,
        headers=headers, content=body, extensions=self.extensions(ctx))`` builds, at less than half
        the cost (the headers are copied once, with ``host`` and ``content-length``, instead of being
        normalised and rebuilt twice). Pass ``url`` as an ``httpx.URL`` built once to save its parse."""
        if not isinstance(url, httpx.URL):
            url = httpx.URL(url)
        raw = [(key, value) for key, value in headers.raw if key.lower() != b"content-length"]
        if not any(key.lower() == b"host" for key, _ in raw):  # an operator's own Host header stays
            raw.insert(0, (b"host", url.netloc))
        raw.append((b"content-length", b"%d" % len(body)))
        request = httpx.Request(
            "POST", url, headers=raw, stream=httpx.ByteStream(body), extensions=self.extensions(ctx)
        )
        request.read()  # the body is in memory: make ``request.content`` available, as ``content=`` would
        return request

    def extensions(self, ctx: CallContext) -> dict[str, Any]:
        """httpx request extensions carrying the call's connect timeout (the config's if tighter)."""
        limit = self._connect_timeout
        return self.extensions_for(ctx.connect_timeout if limit is None else min(limit, ctx.connect_timeout))

    def extensions_for(self, connect_timeout: float) -> dict[str, Any]:
        """httpx request extensions carrying ``connect_timeout`` (the other deadlines are ours)."""
        extensions = self._extensions.get(connect_timeout)
        if extensions is None:
            extensions = {"timeout": {"connect": connect_timeout, "read": None, "write": None, "pool": None}}
            if len(self._extensions) < _CACHE_LIMIT:
                self._extensions[connect_timeout] = extensions
        return extensions

    def deadlines(self, ctx: CallContext) -> Deadlines:
        """The call's :data:`Deadlines`, starting now; the config's timeouts may only tighten them.

        The first-token timeout never exceeds the total one, so a timeout names the deadline that
        really passed.
        """
        first = ctx.first_token_timeout
        if self._first_token_timeout is not None and self._first_token_timeout < first:
            first = self._first_token_timeout
        total = ctx.total_timeout
        if self._total_timeout is not None and self._total_timeout < total:
            total = self._total_timeout
        if total < first:
            first = total
        now = asyncio.get_running_loop().time()  # anyio.current_time(), without its backend lookup
        return first, now + first, total, now + total

    @staticmethod
    def deadlines_within(timeout: float) -> Deadlines:
        """:data:`Deadlines` for an exchange that must be over within ``timeout`` (model discovery)."""
        end = anyio.current_time() + timeout
        return timeout, end, timeout, end

    # -- exchanges ----------------------------------------------------------------------------------

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for ``request``: only its connect timeout; the other deadlines are ours."""
        limits = request.extensions.get("timeout")
        connect = limits.get("connect") if limits else self._default_connect
        timeout = self._timeouts.get(connect)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
            if len(self._timeouts) < _CACHE_LIMIT:
                self._timeouts[connect] = timeout
        return timeout

    async def send(
        self, request: httpx.Request, deadline: float, waited: float, what: str = "response"
    ) -> aiohttp.ClientResponse:
        """Send ``request`` and return the response once its headers arrived (before ``deadline``).

        Through the pooled aiohttp session: httpx's client would add an auth flow, redirect handling
        and cookie persistence to every call, and its transport adapter two more conversions, which
        together cost more than aiohttp's own exchange. The caller closes the response
        (``release()``). A gzip or deflate answer (from an upstream that ignored
        ``accept-encoding: identity``) is decoded as it is read.
        """
        session = self._session
        if session is None:
            raise self._not_started()
        try:
            body: Any = request.content or None
        except httpx.RequestNotRead:  # a streamed body; aiohttp frames it itself
            body = request.stream
            request.headers.pop("transfer-encoding", None)
        headers = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in request.headers.raw]
        if self._proxy_authorization is not None and request.url.scheme == "http":
            headers.append(("Proxy-Authorization", self._proxy_authorization))
        with TaskDeadline(deadline):  # one timer: a cancel scope costs twice as much on every call
            try:
                return await session.request(
                    request.method, str(request.url), headers=headers, data=body, timeout=self._timeout(request),
                    allow_redirects=False, **self._proxy,
                )
            except Exception as exc:  # any failure to reach the upstream is the upstream's
                raise self._transport_error(exc) from exc
        raise ProviderTimeout(f"{self.label} sent no {what} within {waited:g}s", provider=self._owner.name)

    async def read(self, response: aiohttp.ClientResponse, deadline: float, limit: int, waited: float) -> bytes:
        """The whole body, read before ``deadline``; ``ProviderUnavailable`` past ``limit`` bytes."""
        declared = _header(response, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self._too_large(limit)
        content = response.content
        parts: list[bytes] = []
        size = 0
        with TaskDeadline(deadline):
            try:
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large(limit)
                    parts.append(chunk)
            except ProviderError:
                raise
            except Exception as exc:  # any failure to read from the upstream is the upstream's
                raise self._transport_error(exc) from exc
            return parts[0] if len(parts) == 1 else b"".join(parts)
        raise ProviderTimeout(f"{self.label} sent no complete answer within {waited:g}s", provider=self._owner.name)

    async def fetch(self, request: httpx.Request, deadlines: Deadlines, limit: int, *, what: str = "response") -> bytes:
        """Send ``request`` and return the body of its 2xx answer (at most ``limit`` bytes): the whole
        exchange of a non-streamed call. A non-2xx answer raises the adapter's error for it."""
        first, first_deadline, total, deadline = deadlines
        response = await self.send(request, first_deadline, first, what)
        try:
            if response.status >= 300:
                raise await self.status_error(response, deadline)
            return await self.read(response, deadline, limit, total)
        finally:
            _close(response)

    async def status_error(self, response: aiohttp.ClientResponse, deadline: float) -> ProviderError:
        """The error for a non-2xx answer, from a bounded read (64 KiB, 5 s) of its body."""
        status = response.status
        body = b""
        with anyio.CancelScope(deadline=min(deadline, anyio.current_time() + ERROR_BODY_WAIT)):
            with contextlib.suppress(Exception):
                content = response.content
                while len(body) < ERROR_BODY_LIMIT and (chunk := await content.readany()):
                    body += chunk
        if status < 400:
            return ProviderUnavailable(f"{self.label} answered an unexpected {status}", provider=self._owner.name)
        return self._status_error(
            status, httpx.Headers(list(response.raw_headers)), body[:ERROR_BODY_LIMIT], provider=self._owner.name,
            secrets=self.secrets,
        )

    def stream(self, codec: StreamCodec[P], request: ChatRequest, ctx: CallContext) -> EventBatches:
        """Stream ``request`` as kernel events: what an adapter's ``stream`` returns.

        Errors before ``StreamStart`` are raised, later ones end the stream with a ``StreamError``.
        Until the stream started the first-token deadline applies, then the total one. Closing the
        iterator closes the upstream response; a stream that reached its end marker is drained
        first so the connection goes back to the pool. The events parsed from one upstream read
        come out together from :meth:`EventBatches.next_batch`.
        """
        return EventBatches(self._batches(codec, request, ctx))

    async def _batches(
        self, codec: StreamCodec[P], request: ChatRequest, ctx: CallContext
    ) -> AsyncGenerator[list[StreamEvent], None]:
        http_request = codec.stream_request(request, ctx)
        parser = codec.stream_parser(ctx)
        first, first_deadline, total, deadline = self.deadlines(ctx)
        response = await self.send(http_request, first_deadline, first)
        try:
            if response.status >= 300:
                raise await self.status_error(response, deadline)
            media = (_header(response, b"content-type") or b"").partition(b";")[0].strip().lower()
            if media == b"application/json" or media.endswith(b"+json"):  # a whole answer, not a stream
                data = await self.read(response, deadline, ctx.max_response_bytes, total)
                answer = codec.stream_json(data, ctx, parser)
                if parser.failure is not None and not parser.started:
                    raise parser.failure
                if parser.failure is not None:
                    answer = [*answer, parser.failure.stream_event()]
                yield answer
                return
            failure: ProviderError | None = None
            limit = ctx.max_response_bytes
            received = 0
            waited, what = first, "first token"
            content = response.content
            watchdog = TaskDeadline(first_deadline)
            try:
                while True:
                    raw = b""
                    timed_out = watchdog.expired
                    if not timed_out:
                        watchdog.reading = True
                        try:
                            raw = await content.readany()
                        except BaseException as exc:
                            if not watchdog.caught(exc):
                                if not isinstance(exc, Exception):
                                    raise
                                failure = self._transport_error(exc)  # a failed read is the upstream's
                            timed_out = watchdog.expired
                        finally:
                            watchdog.reading = False
                    if timed_out:
                        failure = ProviderTimeout(
                            f"{self.label} sent no {what} within {waited:g}s", provider=self._owner.name
                        )
                    if failure is not None:
                        break
                    if not raw:  # the body ended before the end marker
                        ended = parser.end()
                        if ended:
                            yield ended
                        failure = parser.failure
                        break
                    received += len(raw)
                    if received > limit:
                        failure = self._too_large(limit)
                        break
                    events = parser.feed(raw)
                    if parser.started and what != "complete answer":
                        watchdog.rearm(deadline)
                        waited, what = total, "complete answer"
                    if events:
                        yield events
                    if parser.failure is not None:
                        failure = parser.failure
                        break
                    if parser.done:
                        await self._drain(content, deadline)
                        break
            finally:
                watchdog.disarm()
            if failure is not None:
                if not parser.started:
                    raise failure
                yield [failure.stream_event()]
        finally:
            _close(response)

    async def _drain(self, content: aiohttp.StreamReader, deadline: float) -> None:
        """Read what is left after the end marker (usually nothing: the chunked terminator came in
        the same read), for at most ``DRAIN_WAIT`` seconds and ``DRAIN_LIMIT`` bytes."""
        drained = 0
        if content.at_eof():
            return
        with TaskDeadline(min(deadline, asyncio.get_running_loop().time() + DRAIN_WAIT)):
            with contextlib.suppress(Exception):
                while drained <= DRAIN_LIMIT and (raw := await content.readany()):
                    drained += len(raw)

    # -- errors -------------------------------------------------------------------------------------

    def _transport_error(self, exc: BaseException) -> ProviderError:
        return transport_error(exc, provider=self._owner.name, secrets=self.secrets, label=self.label)

    def _too_large(self, limit: int) -> ProviderUnavailable:
        return ProviderUnavailable(f"{self.label} response is larger than {limit} bytes", provider=self._owner.name)

    def _not_started(self) -> ProviderUnavailable:
        name = self._owner.name
        return ProviderUnavailable(f"provider {name!r} is not started", provider=name)


# -- the adapter side -------------------------------------------------------------------------------


class UpstreamProvider:
    """Base class of a provider adapter that owns one :class:`Upstream` as ``self.upstream``.

    Gives it :meth:`open` / :meth:`aclose` (which :func:`provider_lifespan` calls) and
    ``async with provider:`` (for tests).
    """

    name: str
    upstream: Upstream

    async def open(self, *, connect_timeout: float = 10.0) -> None:
        """Create the pooled upstream client (idempotent)."""
        await self.upstream.open(connect_timeout=connect_timeout)

    async def aclose(self) -> None:
        """Close the upstream client and its connections."""
        await self.upstream.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def provider_lifespan(
    provider: UpstreamProvider,
    context: PluginContext,
    *,
    discover: Callable[..., Awaitable[list[str]]] | None = None,
) -> AsyncIterator[None]:
    """A provider plugin's ``sira_lifespan``: name ``provider`` after the plugin instance, open its
    client (with the kernel's connect timeout), run ``discover(timeout=...)`` if given (a failure is
    logged, not fatal: serving the configured models beats not starting at all), close it on exit."""
    provider.name = context.plugin_id
    limits = context.config.limits
    await provider.open(connect_timeout=limits.connect_timeout)
    try:
        if discover is not None:
            try:
                found = await discover(timeout=limits.first_token_timeout)
            except Exception as exc:
                context.log.warning("model discovery failed", error=str(exc))
            else:
                context.log.info("models discovered", count=len(found))
        yield
    finally:
        await provider.aclose()  # after the kernel drained every call using it


class UpstreamProviderPlugin:
    """Base class of a provider plugin that serves one :class:`UpstreamProvider`: one activation is
    one upstream (run several instances to reach several), each registering its provider under the
    instance id.

    A subclass sets ``Config`` (its config struct) and, in ``__init__``, ``self.config`` and
    ``self.provider``. The hooks: ``sira_lifespan`` opens the provider's client (discovering models
    first when the provider has ``discover`` and the config's ``discover_models`` is on) and closes it
    on exit; ``sira_register_providers`` registers the provider.
    """

    sira_api = 1
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    config: Any
    provider: UpstreamProvider

    @hookimpl
    def sira_lifespan(self, context: PluginContext) -> contextlib.AbstractAsyncContextManager[None]:
        """Open the upstream client (and discover models if configured); close it on exit."""
        discover = getattr(self.provider, "discover", None) if getattr(self.config, "discover_models", False) else None
        return provider_lifespan(self.provider, context, discover=discover)

    @hookimpl
    def sira_register_providers(self, register: ProviderRegistrar) -> None:
        """Register the provider under this instance's id."""
        self.provider.name = register.owner
        register(cast("Provider", self.provider))  # an adapter subclassing UpstreamProvider is one
