"""The thinnest gateway: one starlette route that relays to the upstream.

It is the yardstick for Sira's own overhead. By default it uses the same upstream client as Sira
(one pooled ``aiohttp.ClientSession`` created in the lifespan, no cookie jar, requests sent with
``session.request`` and bodies relayed as they arrive) and the same server settings (uvicorn,
uvloop, httptools, one worker, no access log), and does nothing else: no auth, no routing, no
accounting. ``--client httpx`` relays through an ``httpx.AsyncClient`` over
``httpx_aiohttp.AiohttpTransport`` instead (``client.send``, what Sira used before it sent through
aiohttp directly), a reference for what the httpx layers cost. Usage::

    python bench/passthrough.py --port 8102 --upstream http://127.0.0.1:8101/v1 [--client aiohttp|httpx]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import httpx_aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from canned import UPSTREAM_KEY

CLIENTS = ("aiohttp", "httpx")


def build_app(upstream: str, client: str = "aiohttp") -> Starlette:
    """The passthrough app relaying ``POST /v1/chat/completions`` to ``{upstream}/chat/completions``
    with ``client`` (one of :data:`CLIENTS`)."""
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if client == "aiohttp":
            connector = aiohttp.TCPConnector(limit=256)
            async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
                yield {"session": session}
            return
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        transport = httpx_aiohttp.AiohttpTransport(limits=limits)
        async with httpx.AsyncClient(transport=transport, timeout=60.0) as http:
            yield {"client": http}

    async def relay_aiohttp(request: Request, body: bytes, stream: bool) -> Response:
        session: aiohttp.ClientSession = request.state.session
        answer = await session.request("POST", url, data=body, headers=headers, allow_redirects=False)
        media_type = answer.headers.get("content-type")
        if not stream:
            try:
                return Response(await answer.read(), answer.status, media_type=media_type)
            finally:
                answer.release()
        return StreamingResponse(
            answer.content.iter_any(), answer.status, media_type=media_type, background=BackgroundTask(answer.release)
        )

    async def relay_httpx(request: Request, body: bytes, stream: bool) -> Response:
        http: httpx.AsyncClient = request.state.client
        answer = await http.send(http.build_request("POST", url, content=body, headers=headers), stream=stream)
        media_type = answer.headers.get("content-type")
        if not stream:
            return Response(answer.content, answer.status_code, media_type=media_type)
        return StreamingResponse(
            answer.aiter_raw(), answer.status_code, media_type=media_type, background=BackgroundTask(answer.aclose)
        )

    relay = relay_aiohttp if client == "aiohttp" else relay_httpx

    async def chat_completions(request: Request) -> Response:
        body = await request.body()
        try:
            stream = bool(json.loads(body).get("stream"))
        except (ValueError, AttributeError):
            stream = False
        return await relay(request, body, stream)

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:8101/v1")
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp", help="upstream client (default: Sira's)")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream, args.client),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
