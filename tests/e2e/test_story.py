"""`make story` (`ape run story`), run as a reader runs it: a new process with an Anvil of its
own (`host: auto`). The story checks itself step by step (each state it shows, the call, the
cure, the tranche, the bankruptcy and its bad debt, the keeper's earnings against the events,
token conservation) and exits 1 on the first thing that does not hold; this test keeps it
from rotting when the rules change (engine v2 broke it silently once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 600


def test_the_story_runs_to_its_report_and_every_check_holds():
    env = dict(os.environ)
    env.pop("APE_FOUNDRY_HOST", None)  # its own Anvil, never a node another process runs
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    ape = Path(sys.executable).with_name("ape")
    done = subprocess.run(
        [str(ape), "run", "story"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4_000:]
    for step in range(1, 9):
        assert f"Step {step} ·" in out, f"step {step} missing:\n{out[-2_000:]}"
    assert "MarginCallCleared on B by the tranche" in out
    assert "BadDebt of D" in out
    assert "conservation check OK" in out
