"""Local TCP ports for the processes the project starts (Anvil, the dashboard): a free one to
listen on, and whether (or once) something listens on one. Base module: imports no layer."""

from __future__ import annotations

import socket
import time

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; another process may still take it
    before the caller binds it)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether a process accepts connections on `port` of localhost now."""
    with socket.socket() as s:
        return s.connect_ex((LOCALHOST, port)) == 0


def wait_port(port: int, timeout: float = 30.0, poll: float = 0.1) -> bool:
    """Waits until something listens on `port` (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return True
        time.sleep(poll)
    return False


__all__ = ["LOCALHOST", "free_port", "listening", "wait_port"]
