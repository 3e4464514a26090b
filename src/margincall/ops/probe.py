"""One round of questions to the node, bounded by a timeout: the watchdog's only I/O.

`probe(url, timeout, expect)` sends one JSON-RPC batch (`eth_blockNumber`, `eth_chainId`
and, once the deployment is known, `eth_getCode` of the engine and `eth_getBlockByNumber`
of its creation block) over its own HTTP connection, never through Ape or web3: a bot's
handler stuck on a slow node cannot hold the watchdog up, and the watchdog never waits
longer than `timeout`. A node that does not answer batches is asked one call at a time.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from margincall.ops.health import Expect, Probe

HEADERS = {"Content-Type": "application/json", "User-Agent": "margincall-watchdog/1"}


class RpcError(RuntimeError):
    """The node answered with a JSON-RPC error or a malformed reply."""


def _post(url: str, payload: Any, timeout: float) -> Any:
    data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers=HEADERS, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - the node's URL
        return json.loads(reply.read())


def _calls(expect: Expect | None) -> list[tuple[str, list]]:
    calls: list[tuple[str, list]] = [("eth_blockNumber", []), ("eth_chainId", [])]
    if expect is not None:
        calls.append(("eth_getCode", [expect.engine, "latest"]))
        calls.append(("eth_getBlockByNumber", [hex(expect.anchor_block), False]))
    return calls


def ask(url: str, calls: list[tuple[str, list]], timeout: float) -> list[Any]:
    """The results of `calls`, in order (one batch; one by one if batches are refused)."""
    deadline = time.monotonic() + timeout
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)
    ]
    replies = _post(url, batch, timeout)
    if not isinstance(replies, list):  # no batch support: one call at a time, same budget
        replies = []
        for item in batch:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            replies.append(_post(url, item, left))
    by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
    out = []
    for i, (method, _) in enumerate(calls):
        reply = by_id.get(i)
        if reply is None or "error" in reply:
            error = (reply or {}).get("error", "no reply")
            raise RpcError(f"{method}: {error}")
        out.append(reply.get("result"))
    return out


def _timed_out(err: BaseException) -> bool:
    if isinstance(err, (TimeoutError, socket.timeout)):
        return True
    reason = getattr(err, "reason", None)
    return isinstance(reason, (TimeoutError, socket.timeout))


def probe(url: str, timeout: float, expect: Expect | None = None) -> Probe:
    """Asks the node; never raises (a failure is a `Probe` with its `error`)."""
    start = time.monotonic()
    try:
        results = ask(url, _calls(expect), timeout)
        head, chain_id = int(results[0], 16), int(results[1], 16)
        has_code = anchor = None
        if expect is not None:
            has_code = results[2] not in (None, "", "0x", "0x0")
            block = results[3]
            anchor = str(block.get("hash") or "") if isinstance(block, dict) else ""
    except Exception as err:  # noqa: BLE001 - every failure is a finding
        detail = getattr(err, "reason", None) or err
        return Probe(
            at=time.monotonic(),
            error=f"{type(detail).__name__}: {detail}",
            timed_out=_timed_out(err),
            latency=time.monotonic() - start,
        )
    return Probe(
        at=time.monotonic(),
        head=head,
        chain_id=chain_id,
        has_code=has_code,
        anchor_hash=anchor,
        latency=time.monotonic() - start,
    )


__all__ = ["RpcError", "ask", "probe"]
