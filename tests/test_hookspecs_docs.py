"""docs/plugin-hooks.md documents every hook in sira_kernel/hookspecs.py, exactly, and nothing else."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from sira_kernel import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugin-hooks.md"
HEADING = re.compile(r"^### `(sira_\w+)\((.*)\) -> (.+)`$", re.MULTILINE)
KINDS = {
    **dict.fromkeys(hookspecs.REGISTRATION_HOOKS, "registration"),
    **dict.fromkeys(hookspecs.DECISION_HOOKS, "decision"),
    **dict.fromkeys(hookspecs.LIFECYCLE_HOOKS, "lifecycle"),
}


def declared_hooks() -> dict[str, str]:
    """Hook name → its signature as the docs must show it, from the hookspec module itself."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    hooks = {}
    for name, function in vars(hookspecs).items():
        if not name.startswith("sira_") or manager.parse_hookspec_opts(hookspecs, name) is None:
            continue
        signature = inspect.signature(function, eval_str=False)
        parameters = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
        hooks[name] = f"{name}({parameters}) -> {signature.return_annotation}"
    return hooks


def documented_sections() -> dict[str, tuple[str, str]]:
    """Hook name → (heading signature, section body) from the docs."""
    text = DOC.read_text(encoding="utf-8")
    matches = list(HEADING.finditer(text))
    sections: dict[str, tuple[str, str]] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end():end].split("\n## ", 1)[0]
        assert match.group(1) not in sections, f"{match.group(1)} is documented twice"
        sections[match.group(1)] = (match.group(0)[5:-1], body)
    return sections


HOOKS = declared_hooks()


def field(body: str, name: str) -> str:
    found = re.search(rf"^- \*\*{re.escape(name)}:\*\* (.+)$", body, re.MULTILINE)
    assert found, f"missing '**{name}:**'"
    return found.group(1)


def test_the_hookspec_module_declares_hooks() -> None:
    assert len(HOOKS) >= 11
    assert "sira_authenticate" in HOOKS
    # Every hook has exactly one kind, and the kind tuples name no hook that does not exist.
    assert set(KINDS) == set(HOOKS)
    assert len(KINDS) == len(hookspecs.REGISTRATION_HOOKS + hookspecs.DECISION_HOOKS + hookspecs.LIFECYCLE_HOOKS)


def test_every_hook_is_documented_and_nothing_else() -> None:
    documented = documented_sections()
    missing = sorted(set(HOOKS) - set(documented))
    unknown = sorted(set(documented) - set(HOOKS))
    assert missing == [], f"hooks missing from {DOC.name}: {missing}"
    assert unknown == [], f"{DOC.name} documents hooks that do not exist: {unknown}"


def test_every_heading_is_the_exact_signature() -> None:
    documented = documented_sections()
    wrong = {
        name: (documented[name][0], signature)
        for name, signature in HOOKS.items()
        if name in documented and documented[name][0] != signature
    }
    assert wrong == {}, "documented signature differs from hookspecs.py (documented, declared)"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_section_states_kind_and_semantics(name: str) -> None:
    sections = documented_sections()
    if name not in sections:
        pytest.fail(f"{name} is not documented")
    _, body = sections[name]
    options = pluggy.PluginManager(hookspecs.PROJECT).parse_hookspec_opts(hookspecs, name)
    assert options is not None
    assert field(body, "Kind") == KINDS[name]
    assert field(body, "First result").startswith("yes" if options["firstresult"] else "no")
    assert field(body, "Historic").startswith("yes" if options["historic"] else "no")
    awaitable = field(body, "May return an awaitable")
    if "Awaitable[" in HOOKS[name]:
        assert awaitable.startswith("yes")
    assert field(body, "Called")
    assert "**Arguments:**" in body
    for parameter in inspect.signature(getattr(hookspecs, name), eval_str=False).parameters:
        assert f"`{parameter}: " in body, f"argument {parameter!r} is not described"
    if KINDS[name] == "decision":
        assert field(body, "Default (`trylast`)"), "decision hooks say what the kernel's default does"
    example = re.search(rf"```python\n.*?def {name}\(\s*self,.*?```", body, re.DOTALL)
    assert example, "each hook needs an example implementation"
