"""README's "Deploy and trade" walk, run exactly as written, command by command, on a fresh
Anvil: it reaches a margin call, a cure and a liquidation tranche.

The only change to the commands is the port (8545 becomes a free one, in the `anvil` line
and the `export` alike), so the test never meets a node another process runs. The walk runs
in a copy of the project (contracts, configs, scripts, compile cache), so its deployment
record does not touch the repository's deployments/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from margincall.ports import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 300


def readme_walk(readme: Path) -> list[str]:
    """The commands of the first sh block after the "Deploy and trade" paragraph."""
    text = readme.read_text()
    section = text[text.index("Deploy and trade") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README: no sh block in the Deploy and trade section"
    return [line for line in block.group(1).splitlines() if line.strip()]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    assert wait_port(port, timeout), f"anvil did not listen on {port} within {timeout} s"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("walk")
    for name in ("contracts", "config", "scripts", ".build"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, work / name)
    shutil.copy(ROOT / "ape-config.yaml", work / "ape-config.yaml")
    return work


def test_readme_walk_reaches_a_call_a_cure_and_a_tranche(workdir):
    port = str(free_port())
    env = dict(os.environ)
    env.pop("APE_FOUNDRY_HOST", None)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    outputs: list[tuple[str, str]] = []
    anvil: subprocess.Popen | None = None
    try:
        for line in readme_walk(ROOT / "README.md"):
            args = shlex.split(line.replace("8545", port), comments=True)
            if args[0] == "anvil":
                assert args[-1] == "&", f"the walk starts anvil in the background: {line}"
                anvil = subprocess.Popen(
                    args[:-1], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                wait_for_port(int(port))
                continue
            if args[0] == "export":
                name, value = args[1].split("=", 1)
                env[name] = value
                continue
            done = subprocess.run(
                args, cwd=workdir, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if args[0] == "margincall":  # no start-up noise (a dependency's pydantic warning)
                assert "Warning" not in done.stderr, f"{line}\n{done.stderr}"
            outputs.append((line, " ".join(done.stdout.split())))
    finally:
        if anvil is not None:
            anvil.terminate()
            try:
                anvil.wait(timeout=10)
            except subprocess.TimeoutExpired:
                anvil.kill()
                anvil.wait(timeout=10)

    def out(prefix: str, index: int = 0) -> str:
        matches = [o for line, o in outputs if line.startswith(prefix)]
        return matches[index]

    assert "minted 10,000.00 mUSD" in out("margincall dev mint")
    assert "committed order 0x" in out("margincall trade")
    assert "bought 4.0000 ETH-USD at 2,000.00" in out("margincall orders")
    assert "CALLABLE" in out("margincall status TEST::5 ")
    assert "margin-called 0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc" in out("margincall call")
    assert "margin call cleared" in out("margincall deposit 100 ")
    assert "margin-called" in out("margincall call", 1)
    assert "mined 1 block(s) after 3601 s" in out("margincall dev mine")
    assert "tranche 1 on 0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc (LIQUIDATABLE)" in out(
        "margincall liquidate"
    )
    final = json.loads(out("margincall status TEST::5 --json"))
    left = Decimal(final["positions"][0]["size"])
    assert 0 < left < 4  # the tranche closed part of the 4 ETH
    assert final["state"] == "HEALTHY"  # and brought the ratio back above the call ratio
