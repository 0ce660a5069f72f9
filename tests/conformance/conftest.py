"""The conformance kit's asserts are rewritten (pytest explains a failing comparison) when it is
registered before anything imports it."""

from __future__ import annotations

import sys

import pytest

if "sira_kernel.testing.conformance" not in sys.modules:
    pytest.register_assert_rewrite("sira_kernel.testing.conformance")
