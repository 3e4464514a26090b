"""`margincall dashboard` as a child process attached to a running node (tests, benchmark,
demo): started on a free port, ready once it has read a block, always stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from margincall.keeper.procs import die_with_parent
from margincall.ports import free_port

ROOT = Path(__file__).resolve().parents[3]  # the repo (the Ape project) in a source checkout


class DashboardProcess:
    """The dashboard over `record` on the node at `node_url` (`APE_FOUNDRY_HOST`)."""

    def __init__(
        self,
        record: Path,
        node_url: str,
        log: Path,
        port: int = 0,
        extra: Sequence[str] = (),
        cwd: Path = ROOT,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log)
        self.command = [
            str(Path(sys.executable).parent / "margincall"),
            "dashboard",
            "--deployment",
            str(Path(record).resolve()),
            "--port",
            str(self.port),
            *extra,
        ]
        self.env = {**os.environ, "APE_FOUNDRY_HOST": node_url}
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> DashboardProcess:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120.0) -> DashboardProcess:
        """Until `/healthz` reports a block read from the node."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.running:
                raise RuntimeError(f"the dashboard exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if json.loads(r.read())["block"] > 0:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the dashboard was not ready in {timeout:.0f} s: {self.log()[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; safe to repeat."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


__all__ = ["DashboardProcess", "free_port"]
