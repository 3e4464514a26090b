"""The house's size rules (docs/house.md, STYLE.md): no module of the package over 600 lines,
no function over 80, and every script and bot a thin shell under 150 lines. Plain Python (no
chain); shown failing on planted oversize code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE, MAX_FUNCTION, MAX_SHELL = 600, 80, 150


def oversize(text: str, name: str) -> list[str]:
    """What in one module breaks the rules: the module's length and each long function."""
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE:
        found.append(f"{name}: {lines} lines (at most {MAX_MODULE})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_over_600_lines_and_no_function_over_80():
    modules = sorted((ROOT / "src" / "margincall").rglob("*.py"))
    assert len(modules) > 60
    found = [v for p in modules for v in oversize(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


def test_scripts_and_bots_are_thin_shells():
    shells = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "bots").glob("*.py"))
    assert len(shells) >= 8
    long = {str(p.relative_to(ROOT)): n for p in shells if (n := len(p.read_text().splitlines()))}
    assert {p: n for p, n in long.items() if n >= MAX_SHELL} == {}


def test_the_check_catches_a_long_module_and_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    long_function = f"def f():\n{body}\n"
    assert oversize(long_function, "m.py") == ["m.py:1 f: 81 lines"]
    long_module = "x = 1\n" * (MAX_MODULE + 1)
    assert oversize(long_module, "m.py") == [f"m.py: {MAX_MODULE + 1} lines (at most 600)"]
    assert oversize("def g():\n    return 1\n", "m.py") == []
