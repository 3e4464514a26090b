"""Bot processes: start a Silverback bot against a node, wait for it, always stop it.

The demo and the end-to-end tests run the keeper and the notifier as real
processes (`silverback run keeper ...`), exactly as an operator would. A
`BotProcess` puts the bot in a process group of its own, logs to a file, and
`stop()` escalates within a bounded time (SIGINT, then SIGTERM, then SIGKILL
to the whole group): Silverback's signal handling can hang until the next
block (../shared/TOOLCHAIN.md), and a test or demo must never leave a bot
running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

RUNNER = "margincall.keeper.runtime:ResilientRunner"
LOCAL_NETWORK = "ethereum:local:foundry"
PROJECT_ROOT = Path(__file__).resolve().parents[3]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class BotError(RuntimeError):
    """A bot process did not start, or died, or printed what it must not."""


def die_with_parent(
    sig: int = signal.SIGTERM, parent_pid: int | None = None
) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when its parent dies
    (`prctl(PR_SET_PDEATHSIG)`; kept across `exec`). None where that is not available
    (not Linux, no libc).

    The signal fires when the parent *thread* that forked the child exits. A parent that
    died between the fork and the `prctl` would never send it: the child then checks that
    its parent is still `parent_pid` (default: the caller) and, if not, exits at once with
    code 128 + `sig`, as if it had received it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid() if parent_pid is None else parent_pid

    def setup() -> None:  # runs in the child, between fork and exec: keep it to syscalls
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + int(sig))

    return setup


def silverback_bin() -> str:
    """The `silverback` script of this environment."""
    here = Path(sys.executable).with_name("silverback")
    if here.exists():
        return str(here)
    found = shutil.which("silverback")
    if not found:
        raise BotError("silverback is not installed in this environment (run `make setup`)")
    return found


def bot_command(
    bot: str,
    network: str = LOCAL_NETWORK,
    account: str | None = None,
    runner: str = RUNNER,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """`silverback run BOT --network N --runner R [--account A]`."""
    cmd = [silverback_bin(), "run", bot, "--network", network, "--runner", runner]
    if account:
        cmd += ["--account", account]
    return [*cmd, *extra]


class BotProcess:
    """One Silverback bot process, logging to `log_path`.

    `name` (default `margincall-<bot>-<random>`) is Silverback's bot name, which keys
    its session directory under `.silverback-sessions/`; with `fresh_session` that
    directory is removed at start and at stop, so runs never resume a stale session
    (the margincall bots rebuild their state from the chain) and other runs' bots in
    the same checkout are left alone.
    `node_url` attaches the bot to a running local node (`APE_FOUNDRY_HOST`),
    as the demo and the tests do with their own Anvil; leave it out for a
    named network. `env` adds settings (`MARGINCALL_*`).
    `parent_death_signal` is what the bot gets when this process (strictly: the
    thread that called `start()`) dies; None keeps it running. `command` replaces
    `silverback run ...` (tests run a stand-in).
    """

    def __init__(
        self,
        bot: str,
        log_path: str | Path,
        node_url: str | None = None,
        account: str | None = None,
        env: Mapping[str, str] | None = None,
        network: str = LOCAL_NETWORK,
        cwd: str | Path = PROJECT_ROOT,
        fresh_session: bool = True,
        name: str | None = None,
        parent_death_signal: int | None = signal.SIGTERM,
        command: Sequence[str] | None = None,
    ):
        self.bot = bot
        self.name = name or f"margincall-{bot}-{uuid.uuid4().hex[:8]}"
        self.log_path = Path(log_path)
        self.node_url = node_url
        self.account = account
        self.env = dict(env or {})
        self.network = network
        self.cwd = Path(cwd)
        self.fresh_session = fresh_session
        self.parent_death_signal = parent_death_signal
        self.command = list(command) if command is not None else None
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self._offset = 0  # log position of the current run, for `wait_for`

    # --- lifecycle ---

    def start(self) -> BotProcess:
        if self.running:
            raise BotError(f"{self.bot} is already running (pid {self.proc.pid})")
        if self.fresh_session:
            # Silverback keeps the last block per bot under .silverback-sessions; a new chain
            # (or a restart meant to rebuild from events) must not resume from a stale one.
            shutil.rmtree(self.cwd / ".silverback-sessions" / self.name, ignore_errors=True)
        env = {
            **os.environ,
            **self.env,
            "PYTHONUNBUFFERED": "1",
            "SILVERBACK_BOT_NAME": self.name,
        }
        if self.node_url:
            env["APE_FOUNDRY_HOST"] = self.node_url
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        preexec = (
            None if self.parent_death_signal is None else die_with_parent(self.parent_death_signal)
        )
        self.proc = subprocess.Popen(
            self.command or bot_command(self.bot, self.network, self.account),
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() kills it all
            preexec_fn=preexec,  # noqa: PLW1509 - only a prctl syscall (die_with_parent)
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log(self, whole: bool = False) -> str:
        """The bot's output (of the current run unless `whole`)."""
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return (
            data.decode(errors="replace")
            if whole
            else data[self._offset :].decode(errors="replace")
        )

    def wait_for(self, pattern: str, timeout: float = 60.0, poll: float = 0.1) -> re.Match:
        """Waits until the current run's log matches `pattern` (a regex)."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.log())
            if match:
                return match
            if not self.running:
                raise BotError(
                    f"{self.bot} exited (code {self.proc.returncode}) before "
                    f"{pattern!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise BotError(f"{self.bot}: no {pattern!r} within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(poll)

    def wait_ready(self, timeout: float = 90.0) -> BotProcess:
        """Waits for Silverback's "Startup complete" (the bot's own startup has run)."""
        self.wait_for(r"Startup complete", timeout)
        return self

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to the group; each step waits a bounded time."""
        proc = self.proc
        if proc is None:
            return None
        try:
            for sig, wait in (
                (signal.SIGINT, timeout),
                (signal.SIGTERM, 3.0),
                (signal.SIGKILL, 5.0),
            ):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
            # children left in the group (none expected) go too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return proc.returncode
        finally:
            if self.fresh_session:
                shutil.rmtree(self.cwd / ".silverback-sessions" / self.name, ignore_errors=True)
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> int | None:
        """Kills the bot at once (SIGKILL), as a crash would."""
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        return self.stop(timeout=0.1)

    def __enter__(self) -> BotProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: Iterable[BotProcess], timeout: float = 5.0) -> None:
    """Stops every process (each within `timeout`, then killed), also when one stop fails;
    the first failure is raised after all were tried."""
    errors = []
    for proc in procs:
        try:
            proc.stop(timeout=timeout)
        except Exception as err:  # noqa: BLE001 - stop the others first
            errors.append(err)
    if errors:
        raise errors[0]


__all__ = [
    "BotError",
    "BotProcess",
    "LOCAL_NETWORK",
    "RUNNER",
    "bot_command",
    "die_with_parent",
    "silverback_bin",
    "stop_all",
]
