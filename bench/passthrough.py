"""The thinnest gateway: one starlette route that relays to the upstream.

It is the yardstick for Sira's own overhead. It uses the same upstream client as Sira (httpx over
the aiohttp transport, one pool created in the lifespan) and the same server settings (uvicorn,
uvloop, httptools, one worker, no access log), and does nothing else: no auth, no routing, no
accounting. Usage::

    python bench/passthrough.py --port 8102 --upstream http://127.0.0.1:8101/v1
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx_aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from canned import UPSTREAM_KEY


def build_app(upstream: str, direct_transport: bool = False) -> Starlette:
    """The passthrough app relaying ``POST /v1/chat/completions`` to ``{upstream}/chat/completions``.

    ``direct_transport``: send with ``transport.handle_async_request(httpx.Request(...))`` as Sira's
    ``Upstream`` does, skipping ``AsyncClient.send`` (auth flow, redirects, cookies), instead of the
    usual ``client.post`` / ``client.send``.
    """
    url = upstream.rstrip("/") + "/chat/completions"
    headers = {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"}
    target = httpx.URL(url)

    async def send(request: Request, body: bytes, stream: bool) -> httpx.Response:
        if direct_transport:  # as Sira's Upstream sends
            upstream_request = httpx.Request("POST", target, headers=headers, content=body)
            return await request.state.transport.handle_async_request(upstream_request)
        client: httpx.AsyncClient = request.state.client
        return await client.send(client.build_request("POST", url, content=body, headers=headers), stream=stream)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        transport = httpx_aiohttp.AiohttpTransport(limits=limits)
        async with httpx.AsyncClient(transport=transport, timeout=60.0) as client:
            yield {"client": client, "transport": transport}

    async def chat_completions(request: Request) -> Response:
        body = await request.body()
        try:
            stream = bool(json.loads(body).get("stream"))
        except (ValueError, AttributeError):
            stream = False
        if not stream:
            upstream_response = await send(request, body, False)
            if direct_transport:
                await upstream_response.aread()
            return Response(
                upstream_response.content,
                upstream_response.status_code,
                media_type=upstream_response.headers.get("content-type"),
            )
        upstream_response = await send(request, body, True)
        return StreamingResponse(
            upstream_response.aiter_raw(),
            upstream_response.status_code,
            media_type=upstream_response.headers.get("content-type"),
            background=BackgroundTask(upstream_response.aclose),
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:8101/v1")
    parser.add_argument("--direct-transport", action="store_true", help="call the client's transport directly")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream, args.direct_transport),
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
