"""The ``[plugins.ledger]`` section of kernel.toml."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["LedgerConfig"]


class LedgerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the ledger queues, batches, retries and spills usage records. Every key is optional."""

    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    """Most records written to the store in one ``write_usage`` call."""
    flush_interval: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 1.0
    """Seconds a partial batch waits for more records before it is written anyway."""
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    """Records the bus subscription holds while the writer is busy; past it, records are spilled."""
    spill_path: str = "ledger-spill.jsonl"
    """The spill file (JSON lines); relative paths are resolved in the kernel's ``data_dir``."""
    replay_interval: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 30.0
    """Seconds between two replays of the spill file into the store (one runs at start)."""
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    """Retries of a failed batch write (exponential backoff with jitter) before it is spilled."""
    retry_backoff: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.2
    """Base of the exponential backoff between retries, in seconds (capped at 5 s)."""
    write_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    """Seconds one ``write_usage`` call may take before it counts as failed."""
    store: str = "default"
    """Name of the ``UsageStore`` service to write to and report from."""
