"""The conformance suite against each bundled provider adapter, through a real kernel."""

from __future__ import annotations

from sira_kernel.testing.conformance import ConformanceSuite

from .adapters import ANTHROPIC, GEMINI, MOCK, OPENAI


class TestOpenAI(ConformanceSuite):
    adapter = OPENAI


class TestAnthropic(ConformanceSuite):
    adapter = ANTHROPIC


class TestGemini(ConformanceSuite):
    adapter = GEMINI


class TestMock(ConformanceSuite):
    adapter = MOCK
