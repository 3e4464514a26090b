"""The house's layers (pyproject.toml's importlinter contracts, run by `make lint`) hold on
this tree, and `lint-imports` fails on a planted import that runs up a layer or closes a
cycle. Needs the lint venv (`make setup-lint`, which `make test` runs through `make lint`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = ROOT / ".venv-lint" / "bin" / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="no lint venv: run `make setup-lint`"
)


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to plant violations in."""
    shutil.copytree(
        ROOT / "src" / "margincall",
        tmp_path / "src" / "margincall",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / "margincall" / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_house_keeps_its_layers():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("sdk/types.py", "import margincall.keeper.step  # noqa", "Layers"),
        ("codec.py", "from margincall.sdk import types  # noqa", "Layers"),
        ("keeper/logic.py", "import margincall.notify.outbox  # noqa", "Layers"),
        ("math.py", "import margincall.sdk  # noqa", "The base"),
        ("keeper/logic.py", "import margincall.keeper.step  # noqa", "No import cycle"),
    ],
)
def test_a_planted_upward_import_or_cycle_breaks_a_contract(tree, module, line, contract):
    _plant(tree, module, line)
    done = _lint(tree)
    assert done.returncode != 0
    broken = [ln for ln in done.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), done.stdout
