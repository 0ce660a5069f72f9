"""The matrix in docs/providers.md is the suite's: one row per case, one column per adapter, and
"not applicable" exactly where an adapter's declarations say so. Its outcomes are rewritten by
``python -m sira_kernel.testing.conformance --write`` (``--check`` compares them with a fresh run)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sira_kernel.testing.conformance import (
    CASES,
    SYMBOLS,
    TABLES,
    WRITING,
    AdapterUnderTest,
    _combine,
    render_matrix,
    update_document,
)

from .adapters import ALL

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "providers.md").read_text()
ACME_TESTS = (REPO / "examples" / "provider-acme" / "tests" / "test_conformance.py").read_text()
OUTCOMES = {symbol: outcome for outcome, symbol in SYMBOLS.items()}


def committed(table: str) -> str:
    found = re.search(rf"<!-- conformance:{table}:begin -->\n(.*?)<!-- conformance:{table}:end -->", DOC, re.S)
    assert found, f"docs/providers.md has no {table} matrix"
    return found.group(1)


def parse(block: str) -> dict[str, dict[str, str]]:
    """The matrix a rendered table shows: adapter → case key → outcome."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block.strip().splitlines()]
    adapters = [name.strip("`") for name in rows[0][1:-1]]
    labels = {case.label: case.key for table in TABLES.values() for case in table}
    matrix: dict[str, dict[str, str]] = {adapter: {} for adapter in adapters}
    for row in rows[2:]:
        for adapter, cell in zip(adapters, row[1:-1], strict=True):
            matrix[adapter][labels[row[0]]] = OUTCOMES[cell]
    return matrix


@pytest.mark.parametrize("table", sorted(TABLES))
def test_each_committed_table_is_as_the_suite_renders_it(table: str) -> None:
    if os.environ.get(WRITING):
        pytest.skip("the tables are being rewritten")
    block = committed(table)
    regenerate = "regenerate it: python -m sira_kernel.testing.conformance --write"
    assert render_matrix(parse(block), TABLES[table]) == block, regenerate


def test_one_column_per_adapter() -> None:
    assert sorted(parse(committed("providers"))) == sorted([a.name for a in ALL] + ["provider-acme"])
    assert sorted(parse(committed("anthropic-surface"))) == sorted(a.name for a in ALL)


@pytest.mark.parametrize("adapter", ALL, ids=[a.name for a in ALL])
def test_not_applicable_where_the_declarations_say(adapter: AdapterUnderTest) -> None:
    cells = parse(committed("providers"))[adapter.name]
    for case in CASES:
        if adapter.why_not(case.key) is not None:
            assert cells[case.key] == "skip", f"{case.key}: {adapter.why_not(case.key)}"
        else:
            assert cells[case.key] != "fail", f"{adapter.name} fails {case.key}"


def test_the_documented_example_is_the_acme_one() -> None:
    [example] = re.findall(r"```python\n(from sira_kernel import Capabilities\n.*?)```", DOC, re.S)
    start = example.index("ACME = AdapterUnderTest(")
    assert example[start:].strip() in ACME_TESTS
    assert 'API_KEY = "acme-test-key-0123456789"' in (REPO / "examples/provider-acme/tests/conftest.py").read_text()


def test_a_column_fails_when_any_of_its_tests_fails() -> None:
    assert _combine("pass", "fail") == _combine("skip", "fail") == "fail"
    assert _combine("pass", "skip") == "pass"
    assert _combine("skip", "skip") == "skip"
    assert _combine("pass", "xfail") == "xfail"


def test_update_document_replaces_only_the_block() -> None:
    text = "before\n<!-- conformance:x:begin -->\nold\n<!-- conformance:x:end -->\nafter\n"
    assert update_document(text, "x", "new\n") == text.replace("old\n", "new\n")
    with pytest.raises(ValueError):
        update_document("no markers", "x", "new\n")
