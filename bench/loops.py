"""The ``--loop`` option the in-process benchmarks share, and running their ``main`` on that loop."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="event loop (auto: uvloop when installed)")


def run(main: Callable[..., Awaitable[Any]], *args: Any, loop: str) -> None:
    """``anyio.run(main, *args)`` on asyncio, with uvloop when ``loop`` asks for it (or, for
    ``auto``, when it is installed)."""
    use_uvloop = loop == "uvloop" or (loop == "auto" and importlib.util.find_spec("uvloop") is not None)
    anyio.run(main, *args, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
