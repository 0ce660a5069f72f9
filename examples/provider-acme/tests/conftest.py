"""Fixtures for the adapter's own tests: a fake Acme per test and providers aimed at it."""

from __future__ import annotations

import sys

import pytest

if "sira_kernel.testing.conformance" not in sys.modules:  # pytest explains the kit's failing asserts
    pytest.register_assert_rewrite("sira_kernel.testing.conformance")

from sira_provider_acme import AcmeConfig, AcmeProvider  # noqa: E402

from sira_kernel.testing.providers import adapter_fixtures  # noqa: E402

from .fake_acme import FakeAcmeUpstream  # noqa: E402

API_KEY = "acme-test-key-0123456789"

anyio_backend, fake, open_provider, provider = adapter_fixtures(
    lambda: FakeAcmeUpstream(api_key=API_KEY),
    lambda config: AcmeProvider("acme", AcmeConfig(**config)),
    api_key=API_KEY,
    defaults={"models": ["acme-1"]},
)
