"""Raw ABI codec for the hot paths: a keeper's scan, the simulator, the benchmarks.

Ape's contract calls decode through pydantic models and eth_abi's generic decoder, which costs
milliseconds per call and dominates a scan of hundreds of accounts. Here:

- `Abi` encodes calls and decodes outputs and events from a compiled ABI (the one Ape already
  holds, so no hand-written signature can drift);
- `encode_addresses` builds `f(address[])` calldata directly (about 10x faster than eth_abi);
- `decode_statuses` turns the raw output of `check_margins` into rows (the SDK's
  `margincall.sdk.events.decode_statuses` makes them `MarginStatus` objects; the struct is
  11 static words; about 5x faster than the generic decoder), and
  `check_status_layout` refuses an engine whose struct is not the one it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from margincall.constants import State

T = TypeVar("T")

# --- ABI -----------------------------------------------------------------------------------


def _canonical(param: Mapping[str, Any]) -> str:
    """The canonical ABI type of a parameter, tuples spelled out."""
    typ = str(param["type"])
    if typ.startswith("tuple"):
        inner = ",".join(_canonical(c) for c in param["components"])
        return f"({inner}){typ[len('tuple') :]}"
    return typ


@dataclass(frozen=True)
class EventAbi:
    name: str
    topic: bytes
    indexed: tuple[tuple[str, str], ...]  # (name, type)
    data: tuple[tuple[str, str], ...]


class Abi:
    """Encoder/decoder for one contract's ABI (a list of JSON ABI entries)."""

    def __init__(self, abi: Iterable[Mapping[str, Any]]):
        self.functions: dict[str, tuple[bytes, list[str], list[str]]] = {}
        self.outputs: dict[str, list[Mapping[str, Any]]] = {}  # name -> the ABI's outputs
        self.events: dict[bytes, EventAbi] = {}
        self.event_names: dict[str, EventAbi] = {}
        for entry in abi:
            kind = entry.get("type")
            if kind == "function":
                ins = [_canonical(p) for p in entry.get("inputs", [])]
                outs = [_canonical(p) for p in entry.get("outputs", [])]
                sig = f"{entry['name']}({','.join(ins)})"
                # Vyper default arguments produce overloads; keep the longest form
                known = self.functions.get(entry["name"])
                if known is None or len(ins) > len(known[1]):
                    self.functions[entry["name"]] = (keccak(text=sig)[:4], ins, outs)
                    self.outputs[entry["name"]] = list(entry.get("outputs", []))
            elif kind == "event":
                params = entry.get("inputs", [])
                sig = f"{entry['name']}({','.join(_canonical(p) for p in params)})"
                ev = EventAbi(
                    name=entry["name"],
                    topic=keccak(text=sig),
                    indexed=tuple((p["name"], _canonical(p)) for p in params if p.get("indexed")),
                    data=tuple((p["name"], _canonical(p)) for p in params if not p.get("indexed")),
                )
                self.events[ev.topic] = ev
                self.event_names[ev.name] = ev

    @classmethod
    def of(cls, contract: Any) -> Abi:
        """From an Ape contract instance (its compiled contract type)."""
        return cls(a.model_dump(mode="json", by_alias=True) for a in contract.contract_type.abi)

    def encode(self, name: str, *args: Any) -> str:
        selector, ins, _ = self.functions[name]
        if ins == ["address[]"]:
            return encode_addresses(selector, args[0])
        return "0x" + (selector + abi_encode(ins, list(args))).hex()

    def decode(self, name: str, data: str | bytes) -> tuple[Any, ...]:
        _, _, outs = self.functions[name]
        raw = bytes.fromhex(data[2:]) if isinstance(data, str) else data
        return tuple(abi_decode(outs, raw))

    def decode_named(self, name: str, data: str | bytes) -> dict[str, Any]:
        """The output of `name` by field name: a struct's components (one struct returned),
        or the outputs' names (several; unnamed ones as `out0`, `out1`...)."""
        values = self.decode(name, data)
        outs = self.outputs[name]
        if len(outs) == 1 and outs[0].get("components"):
            return {c["name"]: v for c, v in zip(outs[0]["components"], values[0], strict=True)}
        return {
            (o.get("name") or f"out{i}"): v
            for i, (o, v) in enumerate(zip(outs, values, strict=True))
        }

    def decode_log(self, log: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """`(event name, fields)` of a raw log, or None if it is not one of this ABI's events."""
        topics = log.get("topics") or []
        if not topics:
            return None
        ev = self.events.get(bytes.fromhex(topics[0][2:]))
        if ev is None or len(topics) != 1 + len(ev.indexed):
            return None
        fields: dict[str, Any] = {}
        for (name, typ), topic in zip(ev.indexed, topics[1:], strict=True):
            fields[name] = abi_decode([typ], bytes.fromhex(topic[2:]))[0]
        values = abi_decode([t for _, t in ev.data], bytes.fromhex(log["data"][2:]))
        for (name, _), value in zip(ev.data, values, strict=True):
            fields[name] = value
        return ev.name, fields


def encode_addresses(selector: bytes, addresses: Sequence[str]) -> str:
    """Calldata of `f(address[])`, without eth_abi's generic encoder (10x faster for the
    hundreds of addresses of a scan or a batch): offset, length, one padded word each."""
    if any(len(a) != 42 for a in addresses):
        raise ValueError("encode_addresses: every address must be 0x and 40 hex digits")
    head = selector.hex() + f"{32:064x}" + f"{len(addresses):064x}"
    return "0x" + head + "".join("0" * 24 + a[2:].lower() for a in addresses)


# --- check_margins, fast ------------------------------------------------------------------

STATUS_FIELDS = (
    ("account", "address"),
    ("collateral", "uint256"),
    ("equity", "int256"),
    ("maintenance", "uint256"),
    ("initial", "uint256"),
    ("ratio", "uint256"),
    ("state", "uint8"),
    ("call_deadline", "uint256"),
    ("next_tranche_time", "uint256"),
    ("positions", "uint256"),
    ("priced", "bool"),
)
STATUS_WORDS = len(STATUS_FIELDS)


def check_status_layout(abi: Abi) -> None:
    """Refuses to run if `check_margins` no longer returns the struct `decode_statuses` reads."""
    _, ins, outs = abi.functions["check_margins"]
    expected = "(" + ",".join(t for _, t in STATUS_FIELDS) + ")[]"
    if ins != ["address[]"] or outs != [expected]:
        raise RuntimeError(
            f"check_margins returns {outs}, the simulator's decoder expects [{expected}]"
        )


def decode_statuses(
    data: str,
    names: Mapping[bytes, str] | None = None,
    row: Callable[..., T] = tuple,  # type: ignore[assignment]
) -> list[T]:
    """`check_margins` output (hex), one `row(*fields)` per account (fields in
    `STATUS_FIELDS` order; the SDK passes its `MarginStatus`).

    The output is one dynamic array of static 11-word structs: an offset, a
    length, then the words. `names` maps raw 20-byte addresses to the
    checksummed strings the caller uses (faster than checksumming each).
    """
    raw = bytes.fromhex(data[2:])
    offset = int.from_bytes(raw[0:32], "big")
    n = int.from_bytes(raw[offset : offset + 32], "big")
    base = offset + 32
    out: list[T] = []
    frombytes = int.from_bytes
    states = tuple(State)
    for i in range(n):
        w = base + i * 32 * STATUS_WORDS
        addr = raw[w + 12 : w + 32]
        account = names.get(addr) if names is not None else None
        if account is None:
            account = to_checksum_address(addr)
        out.append(
            row(
                account,
                frombytes(raw[w + 32 : w + 64], "big"),
                frombytes(raw[w + 64 : w + 96], "big", signed=True),
                frombytes(raw[w + 96 : w + 128], "big"),
                frombytes(raw[w + 128 : w + 160], "big"),
                frombytes(raw[w + 160 : w + 192], "big"),
                states[raw[w + 223]],
                frombytes(raw[w + 224 : w + 256], "big"),
                frombytes(raw[w + 256 : w + 288], "big"),
                frombytes(raw[w + 288 : w + 320], "big"),
                raw[w + 351] == 1,
            )
        )
    return out


__all__ = [
    "STATUS_FIELDS",
    "STATUS_WORDS",
    "Abi",
    "EventAbi",
    "check_status_layout",
    "decode_statuses",
    "encode_addresses",
]
