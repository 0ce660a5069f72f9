"""A Sira provider adapter for Acme, a made-up upstream with its own wire format (see the README).

Acme's wire format lives in ``_wire`` (requests, answers, the newline-delimited stream, error
bodies); everything else (the pooled client, deadlines, size bounds, releasing connections, the
plugin's lifespan) is ``sira_kernel.upstream``'s.
"""

from __future__ import annotations

from ._provider import AcmeConfig, AcmeProvider, AcmeProviderPlugin
from ._wire import AcmeStreamParser, encode_request, status_error

__all__ = ["AcmeConfig", "AcmeProvider", "AcmeProviderPlugin", "AcmeStreamParser", "encode_request", "status_error"]
