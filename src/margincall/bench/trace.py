"""Where one transaction's gas goes, from the node's traces (`debug_traceTransaction`):
the top frame's opcodes by kind, each external call charged with everything it costs the
caller (address access, the callee's execution with its own nested calls, memory).

Coarser than the Gas section's breakdown (no slot names): enough to put two protocols'
transactions side by side, component by component.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

INTRINSIC = "intrinsic (21,000 + calldata)"
REFUND = "storage refund"
READS_COLD = "storage reads, cold"
READS_WARM = "storage reads, warm"
WRITES = "storage writes"
EVENTS = "events"
EXECUTION = "execution (arithmetic, memory, ABI, jumps)"
ORDER = (INTRINSIC, READS_COLD, READS_WARM, WRITES, EVENTS)


def calldata_gas(data: bytes) -> int:
    return sum(16 if b else 4 for b in data)


def _kind(op: str, cost: int) -> str | None:
    if op == "SLOAD":
        return READS_COLD if cost >= 2_100 else READS_WARM
    if op == "SSTORE":
        return WRITES
    if op.startswith("LOG"):
        return EVENTS
    if op in ("CALL", "STATICCALL", "DELEGATECALL"):
        return None  # named by its target
    return EXECUTION


def breakdown(provider: Any, receipt: Any, names: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Gas of `receipt`'s transaction by component, with the number of opcodes in each;
    calls are named `call <names[target]>` (the target's address, lowercase, when unnamed).
    The components add up to `gas_used`."""
    tx = receipt.txn_hash if isinstance(receipt.txn_hash, str) else receipt.txn_hash.hex()
    opts = {"disableStorage": True, "disableMemory": True}
    logs = provider.make_request("debug_traceTransaction", [tx, opts])["structLogs"]
    tree = provider.make_request("debug_traceTransaction", [tx, {"tracer": "callTracer"}])
    subcalls = iter(tree.get("calls", []))
    top = [i for i, step in enumerate(logs) if step["depth"] == 1]
    gas: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for k, i in enumerate(top):
        step = logs[i]
        after = logs[top[k + 1]]["gas"] if k + 1 < len(top) else step["gas"] - step["gasCost"]
        kind = _kind(step["op"], step["gasCost"])
        if kind is None:
            to = next(subcalls)["to"].lower()
            kind = f"call {names.get(to, to)}"
        gas[kind] += step["gas"] - after
        count[kind] += 1
    intrinsic = 21_000 + calldata_gas(bytes(receipt.transaction.data))
    out = {INTRINSIC: (intrinsic, 1)}
    refund = intrinsic + sum(gas.values()) - int(receipt.gas_used)
    if refund:
        out[REFUND] = (-refund, 1)
    out.update({key: (gas[key], count[key]) for key in gas})
    return out


Parts = dict[str, tuple[int, int]]


def side_by_side(left: Parts, right: Parts) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """Both breakdowns on one list of components (0 where a side has none), in the order
    of `ORDER`, then calls, then execution, then the refund."""
    keys = list(dict.fromkeys([*left, *right]))

    def rank(key: str) -> tuple[int, int]:
        if key in ORDER:
            return (0, ORDER.index(key))
        if key == EXECUTION:
            return (2, 0)
        if key == REFUND:
            return (3, 0)
        return (1, -(left.get(key, (0, 0))[0] + right.get(key, (0, 0))[0]))

    none = (0, 0)
    return [(k, left.get(k, none), right.get(k, none)) for k in sorted(keys, key=rank)]
