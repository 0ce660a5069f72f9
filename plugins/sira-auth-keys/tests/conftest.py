"""Fixtures: one gateway (storage-sqlite + auth-keys + api-openai + fake provider) over real HTTP per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sira_auth_keys.testing import Admin, gateway_factory

from sira_kernel.testing import ServerThread


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    db = tmp_path_factory.mktemp("auth-keys") / "sira.db"
    auth = {"estimate_completion_tokens": 8, "spend_refresh_interval": 0.2}
    with ServerThread(gateway_factory(db, price=0.001, auth=auth)) as running:
        yield running


@pytest.fixture(scope="module")
def admin(server: ServerThread) -> Iterator[Admin]:
    with Admin(server) as client:
        yield client
