"""The kit fails adapters that break the contract: a mock adapter with three planted bugs runs the
suite in a separate pytest, and exactly the cases those bugs break fail."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

BROKEN = '''
from collections.abc import AsyncIterator

from sira_kernel import Capabilities, ProviderRateLimited, ProviderUnavailable, StreamError
from sira_kernel.testing.conformance import AdapterUnderTest, ConformanceSuite
from sira_provider_mock import MockConfig, MockProvider, MockProviderPlugin


class BrokenProvider(MockProvider):
    async def chat(self, request, ctx):
        try:
            return await super().chat(request, ctx)
        except ProviderRateLimited as exc:  # bug: the upstream's Retry-After is lost
            raise ProviderRateLimited(exc.message, provider=self.name) from None

    async def stream(self, request, ctx) -> AsyncIterator:
        async for event in super().stream(request, ctx):
            if isinstance(event, StreamError):
                return  # bug: a failed stream ends as if it were complete
            yield event

    async def embed(self, request, ctx):
        raise ProviderUnavailable("bug: embeddings declared but broken", provider=self.name)


class BrokenPlugin(MockProviderPlugin):
    def sira_register_providers(self, register):
        register(BrokenProvider(name=register.owner, config=self.config))


BrokenPlugin.sira_register_providers.sira_impl = MockProviderPlugin.sira_register_providers.sira_impl


def directives(fault, upstream):
    parts = []
    if fault.status is not None:
        parts.append(f"[mock:status={fault.status}]")
    if fault.retry_after is not None:
        parts.append(f"[mock:retry_after={fault.retry_after:g}]")
    if fault.drop_after is not None:
        parts.append(f"[mock:drop={fault.drop_after}]")
    return " " + "".join(parts)


class TestBroken(ConformanceSuite):
    adapter = AdapterUnderTest(
        name="provider-broken", plugin=BrokenPlugin, config=lambda _: {"models": ["m"], "embedding_models": ["e"]},
        chat_model="m", embedding_model="e", capabilities=Capabilities(vision=True, embeddings=True),
        tool_arguments=({}, {}), tool_arguments_text=None, events_before_text=0, inject=directives,
        faults=frozenset({"status", "drop"}),
    )
'''


def test_planted_bugs_fail_their_cases(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text(BROKEN)
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               f"--junitxml={report}", "-k", "text or embeddings or rate_limited or mid_stream or server_error",
               "test_broken.py"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    outcomes = {}
    for testcase in ElementTree.parse(report).iter("testcase"):
        kinds = {child.tag for child in testcase}
        outcomes[testcase.get("name")] = "fail" if kinds & {"failure", "error"} else (
            "skip" if "skipped" in kinds else "pass")
    failed = sorted(name for name, outcome in outcomes.items() if outcome == "fail")
    assert failed == [
        "test_embeddings",
        "test_mid_stream_failure[dropped]",
        "test_rate_limited[chat]",
    ], outcomes
    assert outcomes["test_text"] == "pass"
    assert {outcomes[name] for name in outcomes if name.startswith("test_server_error")} == {"pass"}
