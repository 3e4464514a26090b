"""`margincall.ports`: a free port is free, and waiting for one ends either way."""

from __future__ import annotations

import socket
import time

from margincall.ports import LOCALHOST, free_port, listening, wait_port


def test_a_free_port_has_no_listener_until_one_binds_it():
    port = free_port()
    assert not listening(port)
    with socket.socket() as server:
        server.bind((LOCALHOST, port))
        server.listen()
        assert listening(port)
        assert wait_port(port, timeout=1.0)


def test_waiting_for_a_port_nobody_listens_on_gives_up_after_its_timeout():
    started = time.monotonic()
    assert not wait_port(free_port(), timeout=0.3, poll=0.05)
    assert 0.3 <= time.monotonic() - started < 2.0
