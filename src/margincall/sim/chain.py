"""The simulator's fast path to a local Anvil: JSON-RPC batches, ABI codec, Anvil process.

Ape's per-transaction path (sign, send, wait for the receipt, decode with
pydantic models) costs tens of milliseconds per call; a crash replay sends
thousands of transactions and scans hundreds of accounts every block. Here:

- `Rpc` posts JSON-RPC requests, one HTTP request for a whole batch;
- the raw codec (`Abi`, `encode_addresses`, `decode_statuses`) lives in
  `margincall.codec`, which the SDK's scan uses too; it is re-exported here;
- `Anvil` starts a node of its own on a free port and always stops it.

Transactions are sent with `eth_sendTransaction` from impersonated addresses
(`anvil_autoImpersonateAccount`), with explicit nonces and gas limits, while
the simulator mines blocks itself (`evm_setAutomine false`, `evm_mine`).
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from margincall.codec import (
    STATUS_FIELDS,
    STATUS_WORDS,
    Abi,
    EventAbi,
    check_status_layout,
    encode_addresses,
)
from margincall.ports import free_port
from margincall.sdk.events import decode_statuses

PROJECT_ROOT = Path(__file__).resolve().parents[3]
ANVIL_NPM_BIN = PROJECT_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin"
# the ape-config.yaml test mnemonic, which is also Anvil's default
MNEMONIC = "test test test test test test test test test test test junk"
# a fixed genesis time: with the simulator's own clock (evm_mine at set times), every run of
# a seed sees the same block timestamps
GENESIS_TIMESTAMP = 1_700_000_000


class RpcError(RuntimeError):
    """The node answered a request with an error."""

    def __init__(self, method: str, error: Any):
        self.method = method
        self.error = error
        message = error.get("message") if isinstance(error, Mapping) else str(error)
        super().__init__(f"{method}: {message}")


class Rpc:
    """JSON-RPC over one keep-alive HTTP connection; `batch` sends many requests in one POST.

    Plain `http.client` with TCP_NODELAY: about 0.2 ms per round trip to a local node,
    where `requests` takes about 2 ms (the simulator makes thousands of round trips).
    """

    def __init__(self, uri: str, timeout: float = 300.0):
        parts = urlsplit(uri)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Rpc: an http:// node URI is needed, not {uri!r}")
        self.uri = uri
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.requests = 0  # JSON-RPC requests sent (a batch counts each)
        self.posts = 0  # HTTP round trips

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = conn
        return self.conn

    def _post(self, body: bytes) -> Any:
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
                continue
            if response.status != 200:
                raise RpcError("http", f"HTTP {response.status}: {data[:200]!r}")
            return json.loads(data)
        raise AssertionError("unreachable")

    def call(self, method: str, *params: Any) -> Any:
        return self.batch([(method, list(params))])[0]

    def batch(
        self, calls: Sequence[tuple[str, list[Any]]], allow_errors: bool = False
    ) -> list[Any]:
        """Results in order; with `allow_errors`, a failed request's slot holds its `RpcError`."""
        if not calls:
            return []
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)
        ]
        self.posts += 1
        self.requests += len(calls)
        answers = self._post(json.dumps(payload).encode())
        if isinstance(answers, Mapping):  # a malformed batch gets one error object back
            raise RpcError(calls[0][0], answers.get("error", answers))
        by_id = {a["id"]: a for a in answers}
        out: list[Any] = []
        for i, (method, _) in enumerate(calls):
            answer = by_id[i]
            if "error" in answer:
                err = RpcError(method, answer["error"])
                if not allow_errors:
                    raise err
                out.append(err)
            else:
                out.append(answer.get("result"))
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- Anvil ---------------------------------------------------------------------------------


def anvil_binary() -> str:
    """`anvil` from PATH, else the npm package's binary in this checkout."""
    found = shutil.which("anvil")
    if found:
        return found
    local = ANVIL_NPM_BIN / "anvil"
    if local.exists():
        return str(local)
    raise FileNotFoundError(
        "anvil not found: run `make setup` (npm installs @foundry-rs/anvil) or put it on PATH"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the node gets SIGKILL when the process that started it dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Anvil:
    """An Anvil node of this process: started on a free port, stopped on exit, always.

    No `--steps-tracing` (Ape's own Anvil records every opcode for its traces,
    which the simulator does not need), zero base fee, FIFO ordering within a
    block (deterministic), a fixed genesis time.
    """

    def __init__(
        self,
        timestamp: int = GENESIS_TIMESTAMP,
        gas_limit: int = 30_000_000,
        extra_args: Sequence[str] = (),
    ):
        self.timestamp = timestamp
        self.gas_limit = gas_limit
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            anvil_binary(),
            "--port",
            str(self.port),
            "--mnemonic",
            MNEMONIC,
            "--accounts",
            "10",
            "--timestamp",
            str(self.timestamp),
            "--gas-limit",
            str(self.gas_limit),
            "--base-fee",
            "0",
            "--gas-price",
            "0",
            "--order",
            "fifo",
            "--silent",
            *self.extra_args,
        ]

    def start(self, wait: float = 20.0) -> Anvil:
        for _ in range(5):
            self.port = free_port()
            self.process = subprocess.Popen(
                self.command(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not it
                preexec_fn=_die_with_parent,
            )
            atexit.register(self.stop)
            rpc = Rpc(self.uri, timeout=2)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # port taken between probe and bind: try another
                try:
                    rpc.call("eth_chainId")
                    rpc.close()
                    return self
                except (OSError, http.client.HTTPException, RpcError):
                    time.sleep(0.05)
            rpc.close()
            self.stop()
        raise RuntimeError("anvil did not start")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)

    def __enter__(self) -> Anvil:
        # SIGTERM (a supervisor, `timeout`) unwinds like Ctrl-C, so the node is stopped too
        self._previous_term = None
        if threading.current_thread() is threading.main_thread():
            self._previous_term = signal.signal(signal.SIGTERM, _terminate)
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def hexint(value: str | int | None) -> int:
    if value is None:
        return 0
    return value if isinstance(value, int) else int(value, 16)


__all__ = [
    "Abi",
    "Anvil",
    "EventAbi",
    "GENESIS_TIMESTAMP",
    "Rpc",
    "RpcError",
    "STATUS_FIELDS",
    "STATUS_WORDS",
    "anvil_binary",
    "check_status_layout",
    "decode_statuses",
    "encode_addresses",
    "hexint",
]
