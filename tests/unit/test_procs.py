"""Bot processes die with their parent (`margincall.keeper.procs.BotProcess`).

A parent process starts a `BotProcess` whose command is a stand-in for `silverback run`
(a Python that sleeps), prints the child's pid, and waits. The test kills the parent with
SIGKILL, so nothing of the parent's own cleanup runs: only the kernel's parent-death
signal can end the child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from margincall.keeper.procs import BotProcess, die_with_parent, stop_all

SRC = Path(__file__).resolve().parents[2] / "src"
PARENT = textwrap.dedent(
    """
    import signal, sys, time
    from margincall.keeper.procs import BotProcess

    death = None if sys.argv[2] == "none" else signal.SIGTERM
    bot = BotProcess(
        "stand-in",
        sys.argv[1] + "/bot.log",
        cwd=sys.argv[1],
        parent_death_signal=death,
        command=[sys.executable, "-c", "import time; time.sleep(120)"],
    ).start()
    print(bot.pid, flush=True)
    time.sleep(120)
    """
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only"
)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def start_parent(tmp_path: Path, death: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), death],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"the parent printed {line!r}"
    return parent, int(line)


def test_bot_dies_within_seconds_when_its_parent_is_killed(tmp_path):
    parent, child = start_parent(tmp_path, "sigterm")
    try:
        assert alive(child)
        parent.kill()  # SIGKILL: no cleanup in the parent
        parent.wait(10)
        assert wait_gone(child, 5.0), "the bot outlived its parent"
    finally:
        parent.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_without_the_parent_death_signal_the_bot_is_orphaned(tmp_path):
    """The control: the same parent and child, no signal asked for; the child survives."""
    parent, child = start_parent(tmp_path, "none")
    try:
        parent.kill()
        parent.wait(10)
        assert not wait_gone(child, 1.5), "the child died without a parent-death signal"
    finally:
        parent.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)
        wait_gone(child, 5.0)


def test_a_child_whose_parent_died_before_prctl_signals_itself(tmp_path):
    """`die_with_parent` checks the parent pid after the prctl: a parent that is already
    gone (here: a pid that is not the child's parent) ends the child before it runs."""
    setup = die_with_parent(signal.SIGTERM, parent_pid=1)  # never the child's parent here
    assert setup is not None
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        preexec_fn=setup,  # noqa: PLW1509 - the function under test
    )
    try:
        assert child.wait(10) == 128 + signal.SIGTERM
    finally:
        child.kill()


def test_bot_process_stop_ends_the_stand_in(tmp_path):
    bot = BotProcess(
        "stand-in",
        tmp_path / "bot.log",
        cwd=tmp_path,
        command=[sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
    ).start()
    try:
        bot.wait_for("up", timeout=10)
        assert bot.running
    finally:
        bot.stop(timeout=2)
    assert not bot.running and not alive(bot.pid)


def test_stop_all_stops_every_process_even_when_one_stop_fails():
    stopped = []

    class Fake:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def stop(self, timeout):
            stopped.append((self.name, timeout))
            if self.fail:
                raise RuntimeError(f"{self.name} would not stop")

    with pytest.raises(RuntimeError, match="a would not stop"):
        stop_all([Fake("a", fail=True), Fake("b"), Fake("c", fail=True)], timeout=2.0)
    assert stopped == [("a", 2.0), ("b", 2.0), ("c", 2.0)]
