"""The gas benchmark's breakdowns (`Breakdowns`, mixed into `Bench`): where the engine frame's
gas goes, opcode by opcode, from the node's struct-log and call traces
(`debug_traceTransaction`, `debug_traceCall`): storage reads (cold/warm) and writes named by
engine variable (from the compiler's storage layout), events, each external call named by
contract and function with everything it costs the engine, and the rest.
"""

import json
import subprocess
from collections import defaultdict

from ape import chain
from eth_utils import keccak

from margincall.bench.gas_report import ROOT, Breakdown, calldata_gas
from margincall.constants import MAX_MARKETS


class Breakdowns:
    """The bench's breakdowns side (its accounts `keeper`, `trader` and `veteran`, its address
    book `_names`, the slot names `_slots` it fills on first use, and the `breakdowns` it
    appends to)."""

    # --- names -------------------------------------------------------------------

    def label(self, frame: dict) -> str:
        name, selectors = self._names.get(frame["to"].lower(), (frame["to"], {}))
        fn = selectors.get(frame.get("input", "")[:10].lower(), "?")
        return f"{name}.{fn}"

    def call_detail(self, frame: dict, used: int) -> str:
        """The call's cost to the engine, and the recipient of a token transfer."""
        text = f"{used:,}"
        data = frame.get("input", "")
        if self.label(frame).endswith(".transfer") and len(data) >= 74:
            to = "0x" + data[34:74]
            text += " to " + self.who(to)
        return text

    def who(self, address: str) -> str:
        names = {
            self.keeper.address.lower(): "keeper",
            self.trader.address.lower(): "trader",
            self.veteran.address.lower(): "veteran",
        }
        address = address.lower()
        return names.get(address) or self._names.get(address, (address, {}))[0]

    # --- breakdown ---------------------------------------------------------------

    def breakdown(self, title: str, *, receipt=None, call: tuple[str, bytes] | None = None):
        """
        Attributes the engine frame's gas opcode by opcode (struct-log trace):
        storage reads (cold/warm, by variable), writes, events, each external
        call with everything it costs the engine (address access, callee,
        memory), and the rest (arithmetic, memory, ABI, control flow).
        """
        opts = {"disableStorage": True, "disableMemory": True}
        calls = {"tracer": "callTracer"}
        req = chain.provider.make_request
        if receipt is not None:
            tx = receipt.txn_hash if isinstance(receipt.txn_hash, str) else receipt.txn_hash.hex()
            struct = req("debug_traceTransaction", [tx, opts])
            tree = req("debug_traceTransaction", [tx, calls])
            data = bytes(receipt.transaction.data)
            total = receipt.gas_used
        else:
            to, data = call
            params = {"to": to, "data": "0x" + data.hex()}
            struct = req("debug_traceCall", [params, "latest", opts])
            tree = req("debug_traceCall", [params, "latest", calls])
            total = None
        logs = struct["structLogs"]
        top = [i for i, step in enumerate(logs) if step["depth"] == 1]
        subcalls = iter(tree.get("calls", []))
        gas: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        detail: dict[str, list[str]] = defaultdict(list)
        for k, i in enumerate(top):
            step = logs[i]
            after = logs[top[k + 1]]["gas"] if k + 1 < len(top) else step["gas"] - step["gasCost"]
            used = step["gas"] - after
            op = step["op"]
            if op in ("SLOAD", "SSTORE"):
                cold = op == "SLOAD" and step["gasCost"] >= 2100
                key = {
                    "SSTORE": "storage writes",
                    "SLOAD": "storage reads, cold" if cold else "storage reads, warm",
                }[op]
                if op == "SSTORE" or cold:
                    detail[key].append(self.slot_name(int(step["stack"][-1], 16)))
            elif op.startswith("LOG"):
                key = "events"
            elif op in ("CALL", "STATICCALL", "DELEGATECALL"):
                frame = next(subcalls)
                key = "call " + self.label(frame)
                detail[key].append(self.call_detail(frame, used))
            elif op in ("TLOAD", "TSTORE"):
                key = "reentrancy lock (transient storage)"
            else:
                key = "execution (arithmetic, memory, ABI, jumps)"
            gas[key] += used
            count[key] += 1
        execution = sum(gas.values())
        parts = []
        if receipt is not None:
            intrinsic = 21_000 + calldata_gas(data)
            parts.append(("intrinsic (21,000 + calldata)", intrinsic, 1, ""))
            refund = intrinsic + execution - total
            if refund:
                parts.append(("storage refund", -refund, 1, ""))
        else:
            total = execution
        order = sorted(gas, key=lambda key: -gas[key])
        parts += [(key, gas[key], count[key], ", ".join(detail[key])) for key in order]
        self.breakdowns.append(Breakdown(title, total, parts))

    def slot_name(self, slot: int) -> str:
        if self._slots is None:
            self._slots = self._slot_book()
        return self._slots.get(slot, hex(slot))

    def _slot_book(self) -> dict[int, str]:
        """Storage slot -> engine variable, from the compiler's layout (best effort)."""
        try:
            out = subprocess.run(
                ["vyper", "-f", "layout", "MarginEngine.vy"],
                cwd=ROOT / "contracts",
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            layout = json.loads(out)["storage_layout"]
        except (OSError, ValueError, KeyError, subprocess.SubprocessError):
            return {}
        who = {
            self.trader.address: "trader",
            self.keeper.address: "keeper",
            self.veteran.address: "veteran",
        }

        def word(x: int | str) -> bytes:
            return int(x, 16).to_bytes(32, "big") if isinstance(x, str) else x.to_bytes(32, "big")

        def h(*parts: bytes) -> int:
            return int.from_bytes(keccak(b"".join(parts)), "big")

        book: dict[int, str] = {}
        variables = []
        for name, info in layout.items():
            if "slot" in info:
                variables.append((name, info))
            else:  # a module's namespace
                variables += [(f"{name}.{sub}", v) for sub, v in info.items() if "slot" in v]
        for name, info in variables:
            slot, kind, n = info["slot"], info["type"], info["n_slots"]
            if kind.startswith("HashMap[address, HashMap[uint256"):
                for a, an in who.items():
                    inner = h(word(slot), word(a))
                    for m in range(MAX_MARKETS):
                        book[h(word(inner), word(m))] = f"{name}[{an}][{m}]"
            elif kind.startswith("HashMap[address"):
                for a, an in who.items():
                    book[h(word(slot), word(a))] = f"{name}[{an}]"
            elif kind.startswith("HashMap[uint256"):
                for m in range(MAX_MARKETS):
                    book[h(word(slot), word(m))] = f"{name}[{m}]"
            elif n == 1:
                book[slot] = name
            else:
                for i in range(n):
                    book[slot + i] = f"{name}[{i}]"
        return book
